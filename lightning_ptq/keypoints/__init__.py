"""Keypoint models: the low-resolution integral model with cosine logits and soft-argmax bias
compensation, its embedded COCO-keypoints data, metrics, training and its task in the shared job."""
from .coco_keypoints import KeypointDataModule, KeypointDataset, keypoint_collate
from .metrics import KeypointEvaluator, nme, pck
from .model import KeypointNet, NonFiniteLogitsError, keypoint_loss
from .softargmax import axis_logits, cell_centres, grid_coordinates, soft_argmax
from .synthetic import KEYPOINT_NAMES, generate_keypoint_dataset
from .task import KeypointTask
from .train import (
    KeypointModule, evaluate_keypoints, load_keypoint_model, pretrained_keypoint_model, save_keypoint_model,
)

__all__ = [
    "KEYPOINT_NAMES", "KeypointDataModule", "KeypointDataset", "KeypointEvaluator", "KeypointTask",
    "KeypointModule", "KeypointNet", "NonFiniteLogitsError", "axis_logits", "cell_centres", "evaluate_keypoints",
    "generate_keypoint_dataset", "grid_coordinates", "keypoint_collate", "keypoint_loss", "load_keypoint_model",
    "nme", "pck", "pretrained_keypoint_model", "save_keypoint_model", "soft_argmax",
]

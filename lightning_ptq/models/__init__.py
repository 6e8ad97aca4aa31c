"""The detectors (the embedded YOLOv8-style default and torchvision FCOS), their losses, training,
inference and evaluation."""
from ..core.checkpoint import CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError, read_checkpoint
from .checkpoint import checkpoint_format, load_detector, save_detector
from .detector import DETECTORS, DetectorModule, build_detector, detect, evaluate_detections
from .fcos import FCOSAdapter, FCOSNet, detection_scores, score_logits
from .pretrain import MODELS, TRAIN_DEFAULTS, pretrained_detector
from .yolo import YOLO, YOLOAdapter, decode_boxes, dfl_distances, make_anchors, postprocess
from .yolo_loss import YOLOLoss, dfl_loss, task_aligned_assign

__all__ = [
    "DETECTORS", "MODELS", "TRAIN_DEFAULTS", "YOLO", "YOLOAdapter", "YOLOLoss", "CheckpointMismatchError",
    "CheckpointNotFoundError", "CorruptCheckpointError", "DetectorModule", "FCOSAdapter", "FCOSNet",
    "build_detector", "checkpoint_format", "decode_boxes", "detect", "detection_scores", "dfl_distances",
    "dfl_loss", "evaluate_detections", "load_detector", "make_anchors", "postprocess", "pretrained_detector",
    "read_checkpoint", "save_detector", "score_logits", "task_aligned_assign",
]

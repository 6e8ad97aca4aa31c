"""The embedded default detector (YOLOv8-style), its loss, training, inference and evaluation."""
from .checkpoint import (
    CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError, load_detector, read_checkpoint,
    save_detector,
)
from .detector import DetectorModule, detect, evaluate_detections
from .pretrain import TRAIN_DEFAULTS, pretrained_detector
from .yolo import YOLO, YOLOAdapter, decode_boxes, dfl_distances, make_anchors, postprocess
from .yolo_loss import YOLOLoss, dfl_loss, task_aligned_assign

__all__ = [
    "TRAIN_DEFAULTS", "YOLO", "YOLOAdapter", "YOLOLoss", "CheckpointMismatchError", "CheckpointNotFoundError",
    "CorruptCheckpointError", "DetectorModule", "decode_boxes", "detect", "dfl_distances", "dfl_loss",
    "evaluate_detections", "load_detector", "make_anchors", "postprocess", "pretrained_detector",
    "read_checkpoint", "save_detector", "task_aligned_assign",
]

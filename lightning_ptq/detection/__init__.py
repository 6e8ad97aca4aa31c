"""Object detection: the embedded YOLOv8-style default and torchvision FCOS (models, losses,
training, inference, evaluation), stock torchvision and Ultralytics detectors seen as Detectors, the synthetic
default dataset and COCO-format data, and the :class:`DetectionTask` that runs any Detector
through the shared job. The errors of the data a user
gives (from :mod:`lightning_ptq.core`) are exported here too."""
from ..core.checkpoint import CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError, read_checkpoint
from ..core.coco_folders import (
    AnnotationFileNotFoundError, EmptySplitError, ImageFileNotFoundError, MalformedAnnotationError, load_coco,
)
from ..core.generated import NotAGeneratedDatasetError, write_generated_dataset
from ..core.images import UnreadableImageError, read_rgb
from ..core.splits import DatasetRootNotFoundError
from .checkpoint import checkpoint_format, load_detector, save_detector
from ..core.detector import Detector, NotADetectorError, check_detector
from .coco import CocoDataModule, CocoDetectionDataset, detection_collate
from .detector import (
    DETECTORS, DetectorModule, architecture, build_detector, detect, detector_class, evaluate_detections, target_of,
)
from .fcos import FCOSAdapter, FCOSNet, detection_scores, score_logits
from .pretrain import TRAIN_DEFAULTS, pretrained_detector
from .preview import save_preview
from .synthetic import CLASS_NAMES, DEFAULT_SPLITS, Difficulty, generate_detection_dataset
from .task import DetectionTask, eval_kwargs, load_data_and_model
from .torchvision_detectors import TorchvisionDetector, TorchvisionFCOS, TorchvisionRetinaNet, TorchvisionSSD
from .torchvision_zoo import RetinaNetR18, SSDLite
from .ultralytics_yolo import UltralyticsYOLO, UntrustedCheckpointError
from .views import can_view, detector_of
from .yolo import YOLO, YOLOAdapter, decode_boxes, dfl_distances, make_anchors, postprocess
from .yolo_loss import YOLOLoss, dfl_loss, task_aligned_assign

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPLITS", "DETECTORS", "TRAIN_DEFAULTS", "YOLO", "Detector", "NotADetectorError",
    "RetinaNetR18", "SSDLite", "TorchvisionDetector", "TorchvisionFCOS", "TorchvisionRetinaNet", "TorchvisionSSD",
    "UltralyticsYOLO", "UntrustedCheckpointError",
    "architecture", "can_view", "check_detector", "detector_class", "detector_of", "target_of", "AnnotationFileNotFoundError",
    "CheckpointMismatchError", "CheckpointNotFoundError", "CocoDataModule", "CocoDetectionDataset",
    "CorruptCheckpointError", "DatasetRootNotFoundError", "DetectionTask", "DetectorModule", "Difficulty",
    "EmptySplitError", "FCOSAdapter", "FCOSNet", "ImageFileNotFoundError", "MalformedAnnotationError",
    "NotAGeneratedDatasetError", "UnreadableImageError", "YOLOAdapter", "YOLOLoss", "build_detector",
    "checkpoint_format", "decode_boxes", "detect", "detection_collate", "detection_scores", "dfl_distances",
    "dfl_loss", "eval_kwargs", "evaluate_detections", "generate_detection_dataset", "load_coco",
    "load_data_and_model", "load_detector", "make_anchors", "postprocess", "pretrained_detector", "read_checkpoint",
    "read_rgb", "save_detector", "save_preview", "score_logits", "task_aligned_assign", "write_generated_dataset",
]

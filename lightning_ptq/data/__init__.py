"""Detection data: the synthetic default dataset generator and a COCO-format data module; the
errors of the data a user gives (from :mod:`lightning_ptq.core`) are exported here too."""
from ..core.coco_folders import (
    AnnotationFileNotFoundError, EmptySplitError, ImageFileNotFoundError, MalformedAnnotationError, load_coco,
)
from ..core.generated import NotAGeneratedDatasetError, write_generated_dataset
from ..core.images import UnreadableImageError, read_rgb
from ..core.splits import DatasetRootNotFoundError
from .coco import CocoDataModule, CocoDetectionDataset, detection_collate
from .preview import save_preview
from .synthetic_detection import CLASS_NAMES, DEFAULT_SPLITS, Difficulty, generate_detection_dataset

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPLITS", "AnnotationFileNotFoundError", "CocoDataModule", "CocoDetectionDataset",
    "DatasetRootNotFoundError", "Difficulty", "EmptySplitError", "ImageFileNotFoundError",
    "MalformedAnnotationError", "NotAGeneratedDatasetError", "UnreadableImageError", "detection_collate",
    "generate_detection_dataset", "load_coco", "read_rgb", "save_preview", "write_generated_dataset",
]

"""Detection data: the synthetic default dataset generator and a COCO-format data module (and
the split-folder base and safe dataset writing that the keypoint data reuses)."""
from ..core.generated import NotAGeneratedDatasetError, write_generated_dataset
from ..core.images import UnreadableImageError, read_rgb
from .coco import (
    AnnotationFileNotFoundError, CocoDataModule, CocoDetectionDataset, DatasetRootNotFoundError,
    EmptySplitError, ImageFileNotFoundError, MalformedAnnotationError, detection_collate, load_coco,
)
from .preview import save_preview
from .synthetic_detection import CLASS_NAMES, DEFAULT_SPLITS, Difficulty, generate_detection_dataset

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPLITS", "AnnotationFileNotFoundError", "CocoDataModule", "CocoDetectionDataset",
    "DatasetRootNotFoundError", "Difficulty", "EmptySplitError", "ImageFileNotFoundError",
    "MalformedAnnotationError", "NotAGeneratedDatasetError", "UnreadableImageError", "detection_collate", "generate_detection_dataset",
    "load_coco", "read_rgb", "save_preview", "write_generated_dataset",
]

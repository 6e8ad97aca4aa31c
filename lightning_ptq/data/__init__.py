"""Detection data: the synthetic default dataset generator and a COCO-format data module."""
from .coco import (
    AnnotationFileNotFoundError, CocoDataModule, CocoDetectionDataset, DatasetRootNotFoundError,
    EmptySplitError, ImageFileNotFoundError, MalformedAnnotationError, detection_collate, load_coco,
)
from .preview import save_preview
from .synthetic_detection import (
    CLASS_NAMES, DEFAULT_SPLITS, Difficulty, NotAGeneratedDatasetError, generate_detection_dataset,
)

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPLITS", "AnnotationFileNotFoundError", "CocoDataModule", "CocoDetectionDataset",
    "DatasetRootNotFoundError", "Difficulty", "EmptySplitError", "ImageFileNotFoundError",
    "MalformedAnnotationError", "NotAGeneratedDatasetError", "detection_collate", "generate_detection_dataset",
    "load_coco", "save_preview",
]

"""Image classification: embedded shape data (ImageFolder), data module, a small BN ResNet, its training."""
from .data import ClassFoldersMismatchError, ClassificationDataModule, SplitFolderNotFoundError
from .model import BasicBlock, ConvBN, TinyResNet
from .synthetic import CLASS_NAMES, DEFAULT_SPLITS, ClassDifficulty, generate_classification_dataset
from .train import (
    TRAIN_DEFAULTS, ClassifierModule, evaluate_accuracy, load_classifier, pretrained_classifier, save_classifier,
)

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPLITS", "TRAIN_DEFAULTS", "BasicBlock", "ClassDifficulty", "ClassFoldersMismatchError",
    "ClassificationDataModule", "ClassifierModule", "ConvBN", "SplitFolderNotFoundError", "TinyResNet",
    "evaluate_accuracy", "generate_classification_dataset", "load_classifier", "pretrained_classifier",
    "save_classifier",
]

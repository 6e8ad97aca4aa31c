"""Image classification: embedded shape data (ImageFolder), data module, a small BN ResNet, its
training and its task in the shared job."""
from .data import ClassFoldersMismatchError, ClassificationDataModule, SplitFolderNotFoundError
from .model import BasicBlock, ConvBN, TinyResNet
from .synthetic import CLASS_NAMES, DEFAULT_SPLITS, ClassDifficulty, generate_classification_dataset
from .task import ClassificationTask
from .train import (
    TRAIN_DEFAULTS, ClassifierModule, evaluate_accuracy, load_classifier, pretrained_classifier, save_classifier,
)

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPLITS", "TRAIN_DEFAULTS", "BasicBlock", "ClassDifficulty", "ClassFoldersMismatchError",
    "ClassificationDataModule", "ClassificationTask", "ClassifierModule", "ConvBN", "SplitFolderNotFoundError", "TinyResNet",
    "evaluate_accuracy", "generate_classification_dataset", "load_classifier", "pretrained_classifier",
    "save_classifier",
]

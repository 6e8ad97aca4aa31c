"""Calibration: range observation, distillation losses, block reconstruction, the calibration
LightningModule."""
from ..core.tree import batch_inputs
from .api import CalibrationReport, calibrate
from .config import CalibConfig, CalibJobConfig, FeaturesConfig, FGLConfig, ReconConfig
from .features import FeatureMatching
from .fgl import DetectorAdapter, FilteredGlobalLoss, paired_iou
from .keypoint_loss import KeypointDistillLoss
from .losses import NotDistillableError, OutputMSE, check_distillable
from .module import CalibrationModule, NonFiniteLossError
from .observe import EmptyCalibrationError, NonFiniteCalibrationError, calibrate_ranges
from .recon import find_blocks, qdrop_hooks, reconstruct

__all__ = [
    "CalibConfig", "CalibJobConfig", "CalibrationReport", "CalibrationModule", "DetectorAdapter", "EmptyCalibrationError", "FGLConfig",
    "FeatureMatching", "FeaturesConfig", "FilteredGlobalLoss", "KeypointDistillLoss", "NonFiniteCalibrationError",
    "NonFiniteLossError", "NotDistillableError", "OutputMSE", "ReconConfig", "batch_inputs", "calibrate", "calibrate_ranges", "check_distillable", "find_blocks",
    "paired_iou", "qdrop_hooks", "reconstruct",
]

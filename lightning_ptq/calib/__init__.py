"""Calibration: range observation, distillation losses, the calibration LightningModule."""
from .api import calibrate
from .batches import batch_inputs
from .fgl import DetectorAdapter, FilteredGlobalLoss, paired_iou
from .losses import OutputMSE
from .module import CalibrationModule, NonFiniteLossError
from .observe import EmptyCalibrationError, NonFiniteCalibrationError, calibrate_ranges

__all__ = [
    "CalibrationModule", "DetectorAdapter", "EmptyCalibrationError", "FilteredGlobalLoss", "NonFiniteCalibrationError", "NonFiniteLossError",
    "OutputMSE", "batch_inputs", "calibrate", "calibrate_ranges", "paired_iou",
]

"""Calibration: range observation, distillation losses, the calibration LightningModule."""
from .api import calibrate
from .batches import batch_inputs
from .losses import OutputMSE
from .module import CalibrationModule, NonFiniteLossError
from .observe import EmptyCalibrationError, calibrate_ranges

__all__ = [
    "CalibrationModule", "EmptyCalibrationError", "NonFiniteLossError", "OutputMSE",
    "batch_inputs", "calibrate", "calibrate_ranges",
]

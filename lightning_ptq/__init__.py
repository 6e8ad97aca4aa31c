"""lightning_ptq: post-training quantization of detectors and keypoint models, head included.

Public API (no Lightning or Hydra code needed)::

    from lightning_ptq import QuantConfig, quantize, calibrate
    qmodel = quantize(model, QuantConfig(w_bits=4, a_bits=4))
    calibrate(model, qmodel, calib_batches, steps=200)
"""
from .calib import CalibrationModule, OutputMSE, calibrate, calibrate_ranges
from .quant import LayerOverride, QuantConfig, dequantize, quantize, quantized_layers

__all__ = [
    "CalibrationModule", "LayerOverride", "OutputMSE", "QuantConfig", "calibrate",
    "calibrate_ranges", "dequantize", "quantize", "quantized_layers",
]
__version__ = "0.1.0"

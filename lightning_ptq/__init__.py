"""lightning_ptq: post-training quantization of detectors and keypoint models, head included.

Public API (no Lightning or Hydra code needed)::

    from lightning_ptq import CalibConfig, QuantConfig, quantize, calibrate, search_layers, SearchConfig
    qmodel = quantize(model, QuantConfig(w_bits=4, a_bits=4))
    calibrate(model, qmodel, calib_batches, CalibConfig(steps=200))
    result = search_layers(qmodel, calib_batches, my_val_metric, SearchConfig(max_drop=0.01))
    to_onnx(qmodel, calib_batches[0], "model.onnx")          # QDQ graph for onnxruntime / OpenVINO
"""
from .calib import CalibConfig, CalibrationModule, OutputMSE, ReconConfig, calibrate, calibrate_ranges
from .export import ExportError, to_onnx
from .quant import LayerOverride, QuantConfig, dequantize, quantize, quantized_layers
from .search import SearchConfig, apply_layer_params, save_layer_params, search_layers

__all__ = [
    "CalibConfig", "CalibrationModule", "ExportError", "LayerOverride", "OutputMSE", "QuantConfig", "ReconConfig",
    "SearchConfig", "apply_layer_params",
    "calibrate", "calibrate_ranges", "dequantize", "quantize", "quantized_layers", "save_layer_params",
    "search_layers", "to_onnx",
]
__version__ = "0.1.0"

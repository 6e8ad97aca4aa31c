"""Quantization core: configs, fake quantizers, straight-through ops, swapped layers, BN folding."""
from .config import ConfigError, LayerOverride, QuantConfig
from .fold import fold_batchnorm
from .layers import QuantConv2d, QuantLinear
from .quantizer import FakeQuantizer
from .swap import LayerPatternError, dequantize, quantize, quantized_layers, quantizer_parameters, quantizers

__all__ = [
    "ConfigError", "FakeQuantizer", "LayerOverride", "LayerPatternError", "QuantConfig", "QuantConv2d",
    "QuantLinear", "dequantize", "fold_batchnorm", "quantize", "quantized_layers",
    "quantizer_parameters", "quantizers",
]

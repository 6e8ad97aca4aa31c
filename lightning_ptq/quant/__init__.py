"""Quantization core: configs, fake quantizers (uniform and log-affine, built by one factory, each
with an observer), straight-through ops, swapped layers, BN folding."""
from .config import HEAD, ConfigError, LayerOverride, QuantConfig
from .factory import QuantizerSpec, make_quantizer, spec_of
from .fold import fold_batchnorm
from .laq import LogAffineQuantizer
from .layers import QuantConv2d, QuantLinear
from .observer import NonFiniteObservationError, SampleObserver
from .quantizer import QuantizerBase, UniformQuantizer, quantization_disabled
from .swap import LayerPatternError, dequantize, quantize, quantized_layers, quantizer_parameters, quantizers

__all__ = [
    "HEAD", "ConfigError", "LayerOverride", "LayerPatternError", "LogAffineQuantizer", "NonFiniteObservationError", "QuantConfig",
    "QuantConv2d", "QuantLinear", "QuantizerBase", "QuantizerSpec", "SampleObserver", "UniformQuantizer", "dequantize", "fold_batchnorm",
    "make_quantizer", "quantization_disabled", "quantize", "quantized_layers", "quantizer_parameters",
    "quantizers", "spec_of",
]

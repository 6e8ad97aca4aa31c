"""The export error and the check every export starts with, apart from the modules that need
onnx, so they can be used where onnx is not installed."""
from __future__ import annotations

from torch import nn

from ..core import UserError
from ..quant.layers import QuantLayerMixin
from ..quant.swap import quantized_layers

INT4_OPSET = 21  # int4 / uint4 QuantizeLinear and DequantizeLinear (onnx >= 1.16, onnxruntime >= 1.20)


class ExportError(UserError, ValueError):
    """The model (or a setting) cannot be exported or run; the message says why and what to do."""


def calibrated_layers(qmodel: nn.Module) -> dict[str, QuantLayerMixin]:
    """The quantized layers of ``qmodel``; :class:`ExportError` when it has none or one of them was
    never calibrated."""
    layers = quantized_layers(qmodel)
    if not layers:
        raise ExportError(f"{type(qmodel).__name__} has no quantized layer: quantize() and calibrate() it first.")
    for name, layer in layers.items():
        for side, q in (("weight", layer.weight_quant), ("input", layer.input_quant)):
            if not q.initialized:
                raise ExportError(
                    f"layer {name!r} was never calibrated (its {side} quantizer has no range): run "
                    f"lightning_ptq.calibrate(fp_model, qmodel, batches) or load a calibrated state_dict before "
                    f"exporting.")
    return layers

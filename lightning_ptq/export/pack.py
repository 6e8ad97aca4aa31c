"""Pack a calibrated fake-quant model into its low-bit form: integer weight codes, bit-packed.

``export_packed`` gives what a deployment needs per quantized layer (packed weight codes, the
parameters that decode them: per-channel scales, or the location / scale / slope of a log-affine
quantizer; the bias; the input quantizer's parameters; bit widths) and every
other tensor of the model in float; its byte count is the model size we report.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.factory import QuantizerSpec, make_quantizer
from ..quant.laq import LogAffineQuantizer
from ..quant.layers import QuantLayerMixin
from ..quant.quantizer import QuantizerBase
from ..quant.swap import quantized_layers


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer ``codes`` (values in ``[0, 2^bits)``) into a flat uint8 tensor,
    ``bits`` bits per code, little-endian within each code."""
    values = codes.reshape(-1).to(torch.int64).numpy()
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"codes outside [0, {1 << bits}) cannot be packed in {bits} bits.")
    bit_planes = (values[:, None] >> np.arange(bits)) & 1
    return torch.from_numpy(np.packbits(bit_planes.astype(np.uint8).reshape(-1), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` codes as int64."""
    flat = np.unpackbits(packed.numpy(), bitorder="little")[: count * bits].reshape(count, bits)
    return torch.from_numpy((flat.astype(np.int64) << np.arange(bits)).sum(axis=1))


def quantizer_entry(q: QuantizerBase) -> dict[str, torch.Tensor | str]:
    """What rebuilds quantizer ``q``: its kind, bit width, channel axis (-1: per tensor) and parameters."""
    entry = {"kind": "laq" if isinstance(q, LogAffineQuantizer) else "uniform", "bits": torch.tensor(q.bits),
             "channel_axis": torch.tensor(-1 if q.channel_axis is None else q.channel_axis)}
    entry["params"] = {name: p.detach().clone() for name, p in q.named_parameters(recurse=False)}
    return entry


def quantizer_from_entry(entry: dict, symmetric: bool) -> QuantizerBase:
    bits, axis, params = int(entry["bits"]), int(entry["channel_axis"]), entry["params"]
    q = make_quantizer(QuantizerSpec(
        entry["kind"], bits, symmetric=symmetric, channel_axis=None if axis < 0 else axis,
        num_channels=params["mu" if "mu" in params else "scale"].numel(), learnable=False))
    with torch.no_grad():
        for name, value in params.items():
            getattr(q, name).copy_(value)
    return q


def weight_codes(layer: QuantLayerMixin) -> torch.Tensor:
    """Unsigned integer weight codes in ``[0, 2^bits)`` of a calibrated layer, shaped like its weight."""
    if not layer.weight_quant.initialized:
        raise ValueError("the layer is not calibrated: run calibrate() before exporting.")
    return layer.weight_quant.codes(layer.weight.detach())


def export_packed(qmodel: nn.Module) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
    """The deployable content of ``qmodel``: per quantized layer a dict of tensors (packed weight
    codes and what decodes them, uniform or log-affine), and every remaining parameter / buffer
    as a float tensor. Loadable with ``torch.load(weights_only=True)``."""
    layers = quantized_layers(qmodel)
    out: dict = {"layers": {}, "float": {}}
    for name, layer in layers.items():
        entry = {
            "weight_packed": pack_codes(weight_codes(layer), layer.weight_quant.bits),
            "weight_shape": torch.tensor(layer.weight.shape),
            "weight_quant": quantizer_entry(layer.weight_quant),
            "input_quant": quantizer_entry(layer.input_quant),
        }
        if layer.bias is not None:
            entry["bias"] = layer.bias.detach().clone()
        out["layers"][name] = entry
    skip = tuple(f"{n}." for n in layers)
    for key, tensor in qmodel.state_dict().items():
        if not key.startswith(skip):
            out["float"][key] = tensor.detach().clone()
    return out


def unpack_weight(entry: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dequantized float weight of one exported layer."""
    shape = entry["weight_shape"].tolist()
    quantizer = quantizer_from_entry(entry["weight_quant"], symmetric=True)
    codes = unpack_codes(entry["weight_packed"], quantizer.bits, int(np.prod(shape))).reshape(shape)
    return quantizer.decode(codes)


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, str):
        return len(obj.encode())
    return sum(_nbytes(v) for v in obj.values())


def packed_size_bytes(qmodel: nn.Module) -> int:
    """Bytes of the packed low-bit model (weights, scales, biases, remaining float tensors)."""
    return _nbytes(export_packed(qmodel))


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in their float storage."""
    return _nbytes(model.state_dict())

"""Pack a calibrated fake-quant model into its low-bit form: integer weight codes, bit-packed.

``export_packed`` gives what a deployment needs per quantized layer (packed weight codes,
per-channel scales, the bias, the input activation scale / zero point and bit widths) and every
other tensor of the model in float; its byte count is the model size we report.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.layers import QuantLayerMixin
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


def weight_codes(layer: QuantLayerMixin) -> torch.Tensor:
    """Signed integer weight codes of a calibrated layer, same shape as its weight."""
    q = layer.weight_quant
    if not q.initialized:
        raise ValueError("the layer is not calibrated: run calibrate() before exporting.")
    shape = [1] * layer.weight.dim()
    if q.channel_axis is not None:
        shape[q.channel_axis] = -1
    codes = torch.round(layer.weight.detach() / q.scale.detach().reshape(shape))
    return codes.clamp(q.q_min, q.q_max).to(torch.int64)


def export_packed(qmodel: nn.Module) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
    """The deployable content of ``qmodel``: per quantized layer a dict of tensors, and every
    remaining parameter / buffer as a float tensor. Loadable with ``torch.load(weights_only=True)``."""
    layers = quantized_layers(qmodel)
    out: dict = {"layers": {}, "float": {}}
    for name, layer in layers.items():
        wq, aq = layer.weight_quant, layer.input_quant
        codes = weight_codes(layer)
        entry = {
            "weight_packed": pack_codes(codes - wq.q_min, wq.bits),
            "weight_shape": torch.tensor(layer.weight.shape),
            "w_bits": torch.tensor(wq.bits),
            "weight_scale": wq.scale.detach().clone(),
            "a_bits": torch.tensor(aq.bits),
            "input_scale": aq.scale.detach().clone(),
            "input_zero_point": aq.zero_point.detach().round().to(torch.int32),
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
    bits = int(entry["w_bits"])
    q_min = -(1 << (bits - 1))
    codes = unpack_codes(entry["weight_packed"], bits, int(np.prod(shape))).reshape(shape) + q_min
    scale = entry["weight_scale"]
    scale_shape = [-1] + [1] * (len(shape) - 1) if scale.numel() > 1 else [1] * len(shape)
    return codes.float() * scale.reshape(scale_shape)


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return sum(_nbytes(v) for v in obj.values())


def packed_size_bytes(qmodel: nn.Module) -> int:
    """Bytes of the packed low-bit model (weights, scales, biases, remaining float tensors)."""
    return _nbytes(export_packed(qmodel))


def float_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in their float storage."""
    return _nbytes(model.state_dict())

"""Straight-through fake quantization ops (LSQ / LSQ+ style).

Rounding uses the straight-through estimator (STE); the step size gets the LSQ gradient scale
``1 / sqrt(numel * q_max)`` so that learning rates for scales are comparable across layers.
The values and gradients match ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``
(tested), but stay plain autograd so they work on any device and under ``torch.compile``.
"""
from __future__ import annotations

import math

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value as ``x``; its gradient multiplied by ``factor``."""
    return (x - x * factor).detach() + x * factor


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code: ``[-2^(b-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    q_min: int,
    q_max: int,
    channel_axis: int | None = None,
    lsq_grad: bool = True,
) -> torch.Tensor:
    """Quantize then dequantize ``x``: ``(clamp(round(x/s) + round(z), q_min, q_max) - round(z)) * s``.

    Args:
        x: any shape.
        scale, zero_point: shape ``[1]`` (per tensor) or ``[C]`` with ``C = x.shape[channel_axis]``.
        channel_axis: axis of ``x`` that ``scale`` runs along; ``None`` for per tensor.
        lsq_grad: scale the gradients of ``scale`` and ``zero_point`` as LSQ does.
    """
    if channel_axis is not None:
        shape = [1] * x.dim()
        shape[channel_axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    if lsq_grad:
        per_element = x.numel() // max(scale.numel(), 1)
        factor = 1.0 / math.sqrt(per_element * max(q_max, 1))
        scale, zero_point = grad_scale(scale, factor), grad_scale(zero_point, factor)
    zero_point = round_ste(zero_point).clamp(q_min, q_max)
    code = round_ste(x / scale) + zero_point
    # Gradients pass where the rounded code is on the grid (boundaries included); clipped values
    # become constants, so only the scale and zero point learn from them.
    inside = (code >= q_min) & (code <= q_max)
    q = torch.where(inside, code, code.detach().clamp(q_min, q_max))
    return (q - zero_point) * scale

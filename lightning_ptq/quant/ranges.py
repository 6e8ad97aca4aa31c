"""Range initialisers: turn observed values into a scale and zero point.

All functions work on a 2-D view ``[C, N]`` (one row per channel; ``C = 1`` for per tensor) and
return ``(scale [C], zero_point [C])`` as float tensors. Symmetric ranges (weights) have zero point 0
and a signed code; asymmetric ranges (activations) use an unsigned code and a zero point.
"""
from __future__ import annotations

import torch

from .ste import qrange

_EPS = 1e-8
# Clipping ratios tried by the MSE search: a fraction of the observed min/max range.
_MSE_RATIOS = torch.linspace(0.2, 1.0, 81)


def _qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    """Scale and zero point that map ``[lo, hi]`` (per row) onto the integer grid."""
    if symmetric:
        q_min, q_max = qrange(bits, signed=True)
        scale = torch.maximum(hi.abs(), lo.abs()).clamp_min(_EPS) / q_max
        return scale, torch.zeros_like(scale)
    q_min, q_max = qrange(bits, signed=False)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # the range always contains 0 exactly
    scale = (hi - lo).clamp_min(_EPS) / (q_max - q_min)
    zero_point = (q_min - lo / scale).round().clamp(q_min, q_max)
    return scale, zero_point


def minmax_range(rows: torch.Tensor, bits: int, symmetric: bool):
    return _qparams(rows.amin(dim=1), rows.amax(dim=1), bits, symmetric)


def clipped_range(rows: torch.Tensor, ratio: float, bits: int, symmetric: bool):
    """The min/max range of each row shrunk by ``ratio`` (in (0, 1]) towards zero."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"clipping ratio {ratio!r} must lie in (0, 1].")
    return _qparams(rows.amin(dim=1) * ratio, rows.amax(dim=1) * ratio, bits, symmetric)


def percentile_range(rows: torch.Tensor, bits: int, symmetric: bool, percentile: float):
    """Clip each row at its ``percentile`` (and ``100 - percentile`` for the low side)."""
    q = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0], dtype=rows.dtype)
    lo, hi = torch.quantile(rows.float(), q.to(rows.device), dim=1)
    return _qparams(lo, hi, bits, symmetric)


def _quant_error(rows, scale, zero_point, bits, symmetric):
    """Mean squared quantization error per row, for ``K`` candidate ranges: ``[K, C]``."""
    q_min, q_max = qrange(bits, signed=symmetric)
    s, z = scale.unsqueeze(-1), zero_point.unsqueeze(-1)  # [K, C, 1]
    deq = (torch.clamp(torch.round(rows / s) + z, q_min, q_max) - z) * s
    return (deq - rows).pow(2).mean(dim=-1)


def mse_range(rows: torch.Tensor, bits: int, symmetric: bool, chunk: int = 16):
    """Search the clipping ratio of the min/max range that minimises the squared error per row."""
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    best_err = torch.full_like(lo, float("inf"))
    best_scale, best_zp = _qparams(lo, hi, bits, symmetric)
    ratios = _MSE_RATIOS.to(rows.device, rows.dtype)
    for start in range(0, len(ratios), chunk):  # chunks bound the memory of [K, C, N]
        r = ratios[start : start + chunk].unsqueeze(-1)  # [K, 1]
        scale, zp = _qparams(lo * r, hi * r, bits, symmetric)  # [K, C]
        err = _quant_error(rows, scale, zp, bits, symmetric)
        k = err.argmin(dim=0)
        cand = err.gather(0, k.unsqueeze(0)).squeeze(0)
        better = cand < best_err
        idx = torch.arange(rows.shape[0], device=rows.device)
        best_err = torch.where(better, cand, best_err)
        best_scale = torch.where(better, scale[k, idx], best_scale)
        best_zp = torch.where(better, zp[k, idx], best_zp)
    return best_scale, best_zp


def init_range(rows: torch.Tensor, method: str, bits: int, symmetric: bool, percentile: float = 99.99):
    """Dispatch to the initialiser named ``method`` (``minmax``, ``percentile`` or ``mse``)."""
    rows = rows.detach().float()
    if method == "minmax":
        return minmax_range(rows, bits, symmetric)
    if method == "percentile":
        return percentile_range(rows, bits, symmetric, percentile)
    if method == "mse":
        return mse_range(rows, bits, symmetric)
    raise ValueError(f"range initialiser {method!r} is unknown: use minmax, percentile or mse.")

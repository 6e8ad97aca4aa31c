"""Integral (soft-argmax) keypoint regression on a low-resolution grid, and the compensation of
its bias.

Per keypoint the model gives logits on an ``H x W`` grid. They are reduced to one 1-D logit vector
per axis (the mean over the other axis: :func:`axis_logits`), each goes through a softmax, and
the coordinate is the expectation ``x_r = sum_i p_i x_i`` over the cell centres ``x_i``
(:func:`soft_argmax`).

The bias. A softmax gives every cell some probability, so ``x_r`` is pulled toward the grid
centre ``x_c``, most for points near the border and for flat distributions. Gu et al. ("Removing
the Bias of Integral Pose Regression", ICCV 2021) write ``exp(l_i) = 1 + (exp(l_i) - 1)``: with
logits ~0 away from the peak the ``1`` parts form a uniform component of mass ``N`` centred on
``x_c`` and the rest, of mass ``C - N`` (``C = sum_i exp(l_i)``), sits at the true point ``x0``::

    x_r = (N x_c + (C - N) x0) / C   =>   x0 = (C x_r - N x_c) / (C - N)

Our logits are ``beta x cos(f, w)``: bounded by ``[-beta, beta]``, and far from the peak they sit
at some floor ``m`` that is not 0 (cosine similarity of unrelated features, often negative).
Writing ``exp(l_i) = exp(m) + (exp(l_i) - exp(m))`` instead, the uniform part has mass
``N exp(m)``, and with ``p_i = exp(l_i) / C`` and ``p_min = exp(m) / C``::

    x0 = (x_r - N p_min x_c) / (1 - N p_min) = sum_i q_i x_i,   q_i = (p_i - p_min) / (1 - N p_min)

We take ``m = min_i l_i``: the largest uniform component that can be removed while every cell
keeps a non-negative share ``q_i``, so ``x0`` stays inside the grid. For a flat background
plus one peaked cell it recovers ``x0`` exactly; with ``m = 0`` it is Gu et al.'s formula. The
denominator ``1 - N p_min`` lies in ``[0, 1]`` and is 0 only for a perfectly flat distribution
(no information): below ``eps`` we return the plain expectation. Because it is closed-form and
differentiable, the compensated coordinate can be trained on as well as used at inference.
"""
from __future__ import annotations

import torch


def cell_centres(cells: int, stride: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates of the centres of ``cells`` grid cells of width ``stride`` along one
    axis (pixel ``i`` covers ``[i, i + 1)``, so cell ``j`` is centred on ``(j + 0.5) * stride``)."""
    return (torch.arange(cells, device=device, dtype=dtype) + 0.5) * stride


def axis_logits(cell_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, H, W]`` per-cell logits -> ``(x logits [B, K, W], y logits [B, K, H])``: the mean
    over the other axis, so the axis logits keep the bounds of the cell logits."""
    return cell_logits.mean(dim=2), cell_logits.mean(dim=3)


def soft_argmax(logits: torch.Tensor, positions: torch.Tensor, compensate: bool = False,
                eps: float = 1e-4) -> torch.Tensor:
    """Expected position under ``softmax(logits)`` over the last axis; with ``compensate``, the
    bias-compensated position of the module docstring. ``positions`` [N] are the cell centres."""
    prob = _at_least_float32(logits).softmax(dim=-1)
    expected = (prob * positions).sum(-1)
    if not compensate:
        return expected
    cells = logits.shape[-1]
    p_min = prob.amin(dim=-1)
    denom = 1.0 - cells * p_min
    centre = positions.mean()
    compensated = (expected - cells * p_min * centre) / denom.clamp_min(eps)
    return torch.where(denom > eps, compensated, expected)


def gu_compensation(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Gu et al.'s closed form ``(C x_r - N x_c) / (C - N)`` for logits that are ~0 away from the
    peak (no guard): the reference our floor-aware formula reduces to when ``min(logits) = 0``."""
    logits = _at_least_float32(logits)
    c = logits.exp().sum(-1)
    expected = (logits.softmax(-1) * positions).sum(-1)
    cells = logits.shape[-1]
    return (c * expected - cells * positions.mean()) / (c - cells)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def grid_coordinates(cell_logits: torch.Tensor, stride: float, compensate: bool = False):
    """``[B, K, H, W]`` cell logits -> ``(coordinates [B, K, 2] (x, y) in input pixels, x logits
    [B, K, W], y logits [B, K, H])``."""
    lx, ly = axis_logits(cell_logits)
    xs = cell_centres(lx.shape[-1], stride, lx.device)
    ys = cell_centres(ly.shape[-1], stride, ly.device)
    coords = torch.stack([soft_argmax(lx, xs, compensate), soft_argmax(ly, ys, compensate)], dim=-1)
    return coords, lx, ly

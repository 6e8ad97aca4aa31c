"""Learnable logarithmic-affine quantizer (LAQ), the head quantizer of Reg-PTQ (CVPR 2024).

Detection-head tensors, the box-regression branch above all, have a sharp peak and long,
roughly exponential tails (Laplace-like). A uniform grid wastes most of its levels on the tails.
LAQ splits values at a learnable location ``mu`` and, on each side, maps the distance
``d = |x - mu|`` through ``psi(d) = k * log2(d) + a``, an affine map in log space that makes a
Laplace density close to uniform; it rounds ``psi`` to integer codes and maps back.

Codes per side: ``1..L`` with ``L = 2^(bits-1) - 1``, plus one shared zero level (``x = mu``),
so ``2^bits - 1`` codes in all. We write ``a = L - k * log2(s)``, so that the levels are

    d_j = s * 2^((j - L) / k),   j = 1..L

``s`` is the largest magnitude (the clipping point) and ``k`` the number of levels per octave.
With ``k = 1`` every level is a power of two times ``s``: at deployment a multiplication becomes a
bit shift times a per-channel scale. ``shift_exact=True`` keeps that property for good: ``k`` is
chosen among ``1, 1/2, 1/3, 1/4`` (levels ``s * 2^(n (j - L))``, ``n = 1/k``) and not learned, so
every level stays a power of two times the per-channel ``s`` (:meth:`LogAffineQuantizer.shift_steps`). ``mu``, ``s`` and ``k`` are learnable on each side
(straight-through estimator for the rounding) and initialised by a search that minimises the
quantization error on calibration statistics.
"""
from __future__ import annotations

import torch
from torch import nn

from .quantizer import QuantizerBase
from .ste import round_ste

# Search grid of the initialisation: clipping ratio of the largest distance, and how many octaves
# the L levels of a side span (k = L / octaves), so the grid suits every bit width.
_CLIP_RATIOS = torch.linspace(0.3, 1.0, 15)
_OCTAVES = torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 14.0])
_TINY = 1e-12
# Shift-exact slopes k = 1/n: the levels of a side are s * 2^(n (j - L)).
_SHIFT_STEPS = (1, 2, 3, 4)


def _log_levels(d: torch.Tensor, log2_s: torch.Tensor, k: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantize distances ``d >= 0`` to ``{0} U {s * 2^((j - L)/k)}``, straight-through.

    Values below half of the smallest level go to 0; the rest are rounded in log space.
    """
    code = round_ste(_psi(d, log2_s, k, levels))
    # Gradients pass where the code is on the grid; clipped values only teach s and k.
    inside = (code >= 1) & (code <= levels)
    code = torch.where(inside, code, code.detach().clamp(1, levels))
    d_hat = torch.exp2(log2_s) * torch.exp2((code - levels) / k)
    zero = d - d.detach()  # value 0, gradient 1 (straight-through)
    return torch.where(d < _smallest_level(log2_s, k, levels) / 2, zero, d_hat)


def _psi(d: torch.Tensor, log2_s: torch.Tensor, k: torch.Tensor, levels: int) -> torch.Tensor:
    """The log-affine transform ``k * log2(d / s) + L``: level ``j`` sits at ``psi = j``."""
    return k * (torch.log2(d.clamp_min(_TINY)) - log2_s) + levels


def _smallest_level(log2_s: torch.Tensor, k: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.exp2(log2_s) * torch.exp2((1 - levels) / k)


class LogAffineQuantizer(QuantizerBase):
    """LAQ fake quantizer, per tensor or per channel.

    Args:
        bits: code width, 2 to 8 (``2^bits - 1`` levels).
        learnable: ``mu``, ``s`` and ``k`` of both sides are trainable.
        learn_k: also learn ``k``; ``False`` keeps the initial ``k`` (set ``init_k=1.0`` for pure
            powers of two).
        init_k: ``None`` searches ``k`` at initialisation; a number fixes it.
        shift_exact: search ``k`` among ``1/n`` (``n`` in 1..4) and keep it fixed, so that every
            level is ``s * 2^integer`` (products become shifts times a per-channel scale).
        (other arguments: see :class:`QuantizerBase`)
    """

    def __init__(
        self,
        bits: int,
        channel_axis: int | None = None,
        num_channels: int = 1,
        learnable: bool = True,
        learn_k: bool = True,
        init_k: float | None = None,
        shift_exact: bool = False,
        max_samples: int = 1 << 18,
    ) -> None:
        super().__init__(bits, channel_axis, num_channels, max_samples)
        if shift_exact and init_k is not None:
            raise ValueError("shift_exact=True chooses k itself (1/n); drop init_k.")
        self.levels = (1 << (bits - 1)) - 1
        self.learn_k = learn_k and not shift_exact
        self.init_k, self.shift_exact = init_k, shift_exact
        self.mu = nn.Parameter(torch.zeros(num_channels), requires_grad=learnable)
        # Index 0: the side above mu, index 1: the side below.
        self.log2_s = nn.Parameter(torch.zeros(2, num_channels), requires_grad=learnable)
        self.log2_k = nn.Parameter(torch.zeros(2, num_channels), requires_grad=learnable and self.learn_k)

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [self.mu, self.log2_s, self.log2_k] if self.learn_k else [self.mu, self.log2_s]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        shape = self._param_shape(x)
        mu = self.mu.reshape(shape)
        k = torch.exp2(self.log2_k)
        above = x >= mu
        d = (x - mu).abs()
        d_up = _log_levels(d, self.log2_s[0].reshape(shape), k[0].reshape(shape), self.levels)
        d_down = _log_levels(d, self.log2_s[1].reshape(shape), k[1].reshape(shape), self.levels)
        return mu + torch.where(above, d_up, -d_down)

    @torch.no_grad()
    def shift_steps(self, tol: float = 1e-4) -> torch.Tensor | None:
        """``n = 1/k`` per side and channel (``[2, C]`` int64) when every ``1/k`` is a whole number,
        i.e. every level is ``s * 2^(n (j - L))``; ``None`` otherwise."""
        n = torch.exp2(-self.log2_k.detach().double())
        whole = torch.round(n)
        if ((n - whole).abs() > tol).any() or (whole < 1).any():
            return None
        return whole.to(torch.int64)

    def _side_params(self, below: torch.Tensor, shape: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``log2_s`` and ``k`` of the side each element is on (``below``: under ``mu``)."""
        log2_s = torch.where(below, self.log2_s[1].reshape(shape), self.log2_s[0].reshape(shape))
        log2_k = torch.where(below, self.log2_k[1].reshape(shape), self.log2_k[0].reshape(shape))
        return log2_s, torch.exp2(log2_k)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """``L + j`` above ``mu``, ``L - j`` below (``j = 1..L``), ``L`` for the zero level."""
        shape = self._param_shape(x)
        mu = self.mu.reshape(shape)
        above = x >= mu
        log2_s, k = self._side_params(~above, shape)
        d = (x - mu).abs()
        j = torch.round(_psi(d, log2_s, k, self.levels)).clamp(1, self.levels)
        j = torch.where(d < _smallest_level(log2_s, k, self.levels) / 2, torch.zeros_like(j), j)
        return (self.levels + torch.where(above, j, -j)).to(torch.int64)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        shape = self._param_shape(codes)
        signed = codes.float() - self.levels
        log2_s, k = self._side_params(signed < 0, shape)
        d = torch.exp2(log2_s) * torch.exp2((signed.abs() - self.levels) / k)
        return self.mu.reshape(shape) + torch.where(signed == 0, torch.zeros_like(d), signed.sign() * d)

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def _init_params(self, rows: torch.Tensor) -> None:
        mu = rows.median(dim=1).values
        for side, dist in enumerate(((rows - mu[:, None]).clamp_min(0), (mu[:, None] - rows).clamp_min(0))):
            log2_s, log2_k = self._search_side(dist)
            self.log2_s[side].copy_(log2_s.to(self.log2_s))
            self.log2_k[side].copy_(log2_k.to(self.log2_k))
        self.mu.copy_(mu.to(self.mu))

    def _search_side(self, dist: torch.Tensor):
        """Grid search of ``(s, k)`` minimising the squared error of one side's distances.

        ``dist``: ``[C, N]``, zero for the values on the other side (they cost nothing here:
        distance 0 is quantized exactly).
        """
        top = dist.amax(dim=1).clamp_min(1e-8)
        if self.shift_exact:
            ks = 1.0 / torch.tensor(_SHIFT_STEPS, dtype=torch.float32)
        else:
            ks = self.levels / _OCTAVES if self.init_k is None else torch.tensor([float(self.init_k)])
        best_err = torch.full_like(top, float("inf"))
        best_s, best_k = top.log2(), torch.zeros_like(top)
        for k in ks.tolist():
            log2_s = (top[None, :] * _CLIP_RATIOS[:, None].to(top)).log2()  # [R, C]
            k_t = torch.full_like(log2_s, k)
            d_hat = _log_levels(dist[None], log2_s[..., None], k_t[..., None], self.levels)
            err = (d_hat - dist[None]).pow(2).mean(dim=-1)  # [R, C]
            r = err.argmin(dim=0)
            cand = err.gather(0, r[None]).squeeze(0)
            better = cand < best_err
            best_err = torch.where(better, cand, best_err)
            best_s = torch.where(better, log2_s.gather(0, r[None]).squeeze(0), best_s)
            best_k = torch.where(better, torch.full_like(best_k, k).log2(), best_k)
        return best_s, best_k

    def extra_repr(self) -> str:
        return (f"log-affine, levels/side={self.levels}, learn_k={self.learn_k}, shift_exact={self.shift_exact}, "
                f"{self._state_repr()}")

"""AdaRound (Nagel et al., 2020), as BRECQ / QDrop use it inside block reconstruction: learn, per
weight, whether it rounds down or up, instead of rounding to nearest.

While a block is fitted, each uniform weight quantizer of the block is replaced by an
:class:`AdaRoundWeight` with its scale frozen: ``w_q = s * clamp(floor(w / s) + h(V), q_min,
q_max)`` with ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, ``V`` initialised so
that ``h(V)`` is the fractional part of ``w / s`` (the start is the float weight). A regulariser
``sum(1 - |2 h(V) - 1| ** beta)``, with ``beta`` annealed from 20 to 2 after a warm-up, pushes
every ``h`` to 0 or 1. At the end the chosen rounding is written into the weight itself
(``w <- s * (floor(w / s) + [h(V) >= 0.5])``, an exact code of the original quantizer), and the
original quantizer is put back. Log-affine quantizers keep their own learnable parameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..quant.layers import QuantLayerMixin
from ..quant.quantizer import FakeQuantizer

ZETA, GAMMA = 1.1, -0.1  # the stretch of the rectified sigmoid (AdaRound's values)


class AdaRoundWeight(nn.Module):
    """Learnable rounding of one layer's weight on the grid of ``base`` (a symmetric
    :class:`FakeQuantizer`, whose scale stays fixed)."""

    def __init__(self, base: FakeQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        shape = [1] * weight.dim()
        if base.channel_axis is not None:
            shape[base.channel_axis] = -1
        self.register_buffer("step", base.scale.detach().reshape(shape))
        rest = weight.detach() / self.step - torch.floor(weight.detach() / self.step)
        # h(V) = rest at the start: sigmoid(V) = (rest - gamma) / (zeta - gamma)
        p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.v = nn.Parameter(torch.log(p / (1 - p)))

    def soft(self) -> torch.Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes = torch.floor(w.detach() / self.step) + self.soft()
        return codes.clamp(self.base.q_min, self.base.q_max) * self.step

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.soft() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight on the grid with the learned rounding (what the base quantizer reproduces)."""
        codes = torch.floor(w / self.step) + (self.soft() >= 0.5).to(w.dtype)
        return codes.clamp(self.base.q_min, self.base.q_max) * self.step


class AdaRoundBlock:
    """Swap the uniform weight quantizers of ``block`` for :class:`AdaRoundWeight` (with
    ``swap``), give the rounding parameters and the regulariser for the fit, and write the learned
    rounding into the weights (with ``finish``)."""

    def __init__(self, block: nn.Module, steps: int, weight: float = 0.01, warmup: float = 0.2,
                 beta: tuple[float, float] = (20.0, 2.0)) -> None:
        self.steps, self.weight, self.warmup, self.beta = steps, weight, warmup, beta
        self.layers = [m for m in block.modules() if isinstance(m, QuantLayerMixin)
                       and type(m.weight_quant) is FakeQuantizer and m.weight_quant.initialized]
        self.rounding: list[AdaRoundWeight] = []

    def swap(self) -> list[nn.Parameter]:
        for layer in self.layers:
            ada = AdaRoundWeight(layer.weight_quant, layer.weight)
            layer.weight_quant = ada
            self.rounding.append(ada)
        return [a.v for a in self.rounding]

    def regulariser(self, step: int) -> torch.Tensor:
        """Zero during the warm-up, then ``weight`` x the rounding regulariser with ``beta``
        decaying (cosine) from ``beta[0]`` to ``beta[1]``."""
        start = int(self.warmup * self.steps)
        if step < start or not self.rounding:
            return torch.zeros(())
        t = (step - start) / max(self.steps - start, 1)
        beta = self.beta[1] + 0.5 * (self.beta[0] - self.beta[1]) * (1 + math.cos(math.pi * t))
        return self.weight * sum(a.regulariser(beta) for a in self.rounding)

    def finish(self) -> None:
        for layer, ada in zip(self.layers, self.rounding):
            with torch.no_grad():
                layer.weight.copy_(ada.hard_weight(layer.weight))
            layer.weight_quant = ada.base
        self.rounding = []

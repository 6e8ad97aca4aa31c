"""Quantized drop-in layers for ``nn.Conv2d`` and ``nn.Linear``.

``from_float`` builds the quantized layer around the *same* weight and bias ``Parameter`` objects
(no copy), and ``to_float`` gives back a plain layer sharing them again, so swapping is cheap and
an optimizer holding those parameters keeps working.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig
from .factory import QuantizerSpec, make_quantizer
from .fuse import FusedConv2d
from .quantizer import QuantizerBase


class QuantLayerMixin:
    """Adds a per-layer weight quantizer and an input-activation quantizer to a float layer."""

    weight_quant: QuantizerBase
    input_quant: QuantizerBase
    _float_cls: type[nn.Module]

    @staticmethod
    def _init_args(module: nn.Module) -> dict:
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, cfg: QuantConfig, w_bits: int, a_bits: int,
                   laq_weights: bool = False, laq_inputs: bool = False):
        """Wrap ``module`` (sharing its weight and bias) with quantizers of the given widths:
        uniform ones, or log-affine (LAQ) ones where ``laq_weights`` / ``laq_inputs`` say so."""
        if not isinstance(module, cls._float_cls) or isinstance(module, QuantLayerMixin):
            raise TypeError(f"{cls.__name__}.from_float expects {cls._float_cls.__name__}, got {type(module).__name__}")
        new = cls(**cls._init_args(module), device="meta")
        new.weight, new.bias = module.weight, module.bias
        if isinstance(module, FusedConv2d):
            new.activation = module.activation
        per_channel = cfg.w_granularity == "per_channel"
        new.weight_quant = make_quantizer(QuantizerSpec(
            "laq" if laq_weights else "uniform", w_bits, symmetric=True, channel_axis=0 if per_channel else None,
            num_channels=module.weight.shape[0] if per_channel else 1, init=cfg.w_init, percentile=cfg.percentile,
            learnable=cfg.learnable, shift_exact=cfg.laq_shift_exact))
        a_per_channel = cfg.a_granularity == "per_channel"
        in_channels = module.weight.shape[1] * getattr(module, "groups", 1)
        new.input_quant = make_quantizer(QuantizerSpec(
            "laq" if laq_inputs else "uniform", a_bits, symmetric=False, channel_axis=1 if a_per_channel else None,
            num_channels=in_channels if a_per_channel else 1, init=cfg.a_init, percentile=cfg.percentile,
            learnable=cfg.learnable, shift_exact=cfg.laq_shift_exact, max_samples=cfg.act_samples))
        new.to(module.weight.device)
        return new.train(module.training)

    def to_float(self) -> nn.Module:
        """A plain float layer (a :class:`FusedConv2d` if an activation was fused in) sharing
        this layer's weight and bias."""
        activation = self._modules.get("activation")
        if activation is not None:
            return FusedConv2d.from_conv(self, activation)
        new = self._float_cls(**self._init_args(self), device="meta")
        new.weight, new.bias = self.weight, self.bias
        return new.train(self.training)

    @property
    def quantizers(self) -> tuple[QuantizerBase, QuantizerBase]:
        return self.weight_quant, self.input_quant


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    """Quantized input, quantized weight, float bias; then the fused activation, if any."""

    _float_cls = nn.Conv2d

    @staticmethod
    def _init_args(m: nn.Conv2d) -> dict:
        return dict(
            in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size,
            stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
            bias=m.bias is not None, padding_mode=m.padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)
        activation = self._modules.get("activation")  # set only on a fused unit
        return y if activation is None else activation(y)


class QuantLinear(QuantLayerMixin, nn.Linear):
    _float_cls = nn.Linear

    @staticmethod
    def _init_args(m: nn.Linear) -> dict:
        return dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


QUANT_LAYERS: dict[type[nn.Module], type[QuantLayerMixin]] = {
    nn.Conv2d: QuantConv2d,
    FusedConv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}

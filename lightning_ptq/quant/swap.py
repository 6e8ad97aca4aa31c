"""Module swapping: replace the selected float layers of any ``nn.Module`` by quantized ones.

No graph tracing: layers are found by name pattern and type, and replaced on their parent with
``setattr``, so models with data-dependent control flow (detection heads, NMS) work as they are.
"""
from __future__ import annotations

import copy
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..core import UserError
from .config import QuantConfig
from .fold import fold_batchnorm
from .fuse import fuse_activations
from .layers import QUANT_LAYERS, QuantLayerMixin
from .quantizer import QuantizerBase


class LayerPatternError(UserError, ValueError):
    """A layer name pattern matched no module; ``pattern`` is it, ``candidates`` the names of the
    layers it could have matched."""

    def __init__(self, message: str, pattern: str = "", candidates: list[str] | None = None):
        super().__init__(message)
        self.pattern, self.candidates = pattern, list(candidates or [])


def _select(model: nn.Module, cfg: QuantConfig) -> list[str]:
    allowed = tuple(t for t, q in QUANT_LAYERS.items() if q._float_cls.__name__ in cfg.types)
    candidates = [n for n, m in model.named_modules() if type(m) in allowed]
    for pattern in (*cfg.include, *cfg.exclude, *(o.pattern for o in cfg.overrides), *cfg.laq_patterns):
        if not any(fnmatchcase(n, pattern) for n in candidates):
            shown = ", ".join(candidates[:8]) + (" ..." if len(candidates) > 8 else "")
            raise LayerPatternError(
                f"layer pattern {pattern!r} matches no {'/'.join(cfg.types)} layer of "
                f"{type(model).__name__}. Patterns are fnmatch globs on module names such as: "
                f"{shown or '(the model has no such layer)'}. Fix quant.include / quant.exclude / "
                f"quant.overrides / quant.laq_patterns.", pattern, candidates)
    return [
        n for n in candidates
        if any(fnmatchcase(n, p) for p in cfg.include) and not any(fnmatchcase(n, p) for p in cfg.exclude)
    ]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantize(
    model: nn.Module,
    cfg: QuantConfig | None = None,
    inplace: bool = False,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Return ``model`` with BN folded, conv + activation units fused and its selected layers
    replaced by fake-quant layers.

    The quantizers start uninitialised (they pass values through) until calibration sets their
    ranges: see :func:`lightning_ptq.calibrate` or :func:`lightning_ptq.calib.calibrate_ranges`.
    ``example_input`` (optional) checks BN folding numerically; activation fusion needs it (a
    forward pass shows which activation modules are applied once, right after their conv), and
    without it nothing is fused.
    """
    cfg = (cfg or QuantConfig()).for_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    if any(isinstance(m, QuantLayerMixin) for m in model.modules()):
        raise ValueError("the model is already quantized: call dequantize(model) first.")
    if cfg.fold_bn:
        fold_batchnorm(model, example_input)
    if cfg.fuse_act and example_input is not None:  # only a forward pass tells which activations follow their conv
        fuse_activations(model, example_input)
    for name in _select(model, cfg):
        bits = cfg.layer_bits(name)
        if bits is None:
            continue
        layer = model.get_submodule(name)
        set_submodule(model, name, QUANT_LAYERS[type(layer)].from_float(layer, cfg, *bits, *cfg.layer_laq(name)))
    return model


def dequantize(model: nn.Module) -> nn.Module:
    """Swap every quantized layer of ``model`` back to its float layer, in place (BN stays folded)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLayerMixin):
            set_submodule(model, name, module.to_float())
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantLayerMixin]:
    """Name -> quantized layer, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayerMixin)}


def quantizers(model: nn.Module) -> dict[str, QuantizerBase]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizerBase)}


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable quantization parameters (scales, zero points, ...) of ``model``."""
    return [p for q in quantizers(model).values() for p in q.learnable_parameters() if p.requires_grad]

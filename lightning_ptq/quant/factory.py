"""The one place that decides which quantizer class a tensor gets: :func:`make_quantizer` builds
it from a :class:`QuantizerSpec`; the swapped layers, the per-layer search and the packed export
all go through it (``spec_of`` gives the spec of an existing quantizer, to build a variant)."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError
from .laq import LogAffineQuantizer
from .quantizer import QuantizerBase, UniformQuantizer

KINDS = ("uniform", "laq")


@dataclass(frozen=True)
class QuantizerSpec:
    """What a quantizer is.

    Args:
        kind: ``uniform`` (affine grid, :class:`UniformQuantizer`) or ``laq`` (log-affine levels,
            :class:`~lightning_ptq.quant.laq.LogAffineQuantizer`).
        bits: code width.
        symmetric: uniform only: signed codes with zero point 0 (weights), else unsigned with a
            zero point (activations).
        channel_axis, num_channels: per-channel parameters along that axis (``None``: per tensor).
        init, percentile: uniform only: the range initialiser and its percentile.
        learnable: the parameters are trainable.
        shift_exact: laq only: levels that are powers of two (``k = 1/n``).
        max_samples: observed values kept for the initialisers.
    """

    kind: str
    bits: int
    symmetric: bool = False
    channel_axis: int | None = None
    num_channels: int = 1
    init: str = "mse"
    percentile: float = 99.99
    learnable: bool = True
    shift_exact: bool = False
    max_samples: int = 1 << 18


def make_quantizer(spec: QuantizerSpec) -> QuantizerBase:
    """The quantizer ``spec`` describes, uninitialised (it gets its range from data)."""
    common = dict(channel_axis=spec.channel_axis, num_channels=spec.num_channels, learnable=spec.learnable,
                  max_samples=spec.max_samples)
    if spec.kind == "laq":
        return LogAffineQuantizer(spec.bits, shift_exact=spec.shift_exact, **common)
    if spec.kind == "uniform":
        return UniformQuantizer(spec.bits, spec.symmetric, init=spec.init, percentile=spec.percentile, **common)
    raise ConfigError(f"quantizer kind={spec.kind!r} is unknown: choose one of {', '.join(KINDS)}.")


def spec_of(q: QuantizerBase) -> QuantizerSpec:
    """The spec that :func:`make_quantizer` would turn into a quantizer like ``q`` (parameters aside)."""
    common = dict(bits=q.bits, channel_axis=q.channel_axis, num_channels=q.num_channels,
                  learnable=any(p.requires_grad for p in q.learnable_parameters()), max_samples=q.observer.max_samples)
    if isinstance(q, LogAffineQuantizer):
        return QuantizerSpec("laq", shift_exact=q.shift_exact, **common)
    return QuantizerSpec("uniform", symmetric=q.symmetric, init=q.init, percentile=q.percentile, **common)

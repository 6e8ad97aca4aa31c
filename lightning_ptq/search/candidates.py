"""Candidate quantization parameters for one layer, and the quantizers that realise them.

A candidate says, for the weight and the input quantizer of a layer, a bit width and how the
range is chosen: ``minmax``, ``percentile:<p>``, ``mse`` (the squared-error-optimal clipping),
``clip:<r>`` (the min/max range times ``r``), ``laq`` (a log-affine quantizer's own search), or
``best`` (the best found so far for that side; at first, the calibrated parameters). The float
fallback is the candidate with ``float_``. Candidates come cheapest first: other ranges at the
same bits, then more bits, then float.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..quant.factory import make_quantizer, spec_of
from ..quant.laq import LogAffineQuantizer
from ..quant.quantizer import QuantizerBase
from ..quant.ranges import clipped_range, init_range


@dataclass(frozen=True)
class Candidate:
    """Range method and bits for a layer's weights (``w``) and inputs (``a``), or float."""

    w: str = "best"
    a: str = "best"
    w_bits: int | None = None  # None: unchanged
    a_bits: int | None = None
    float_: bool = False


def range_methods(percentiles, clip_ratios) -> list[str]:
    return ["minmax", *(f"percentile:{p:g}" for p in percentiles), "mse", *(f"clip:{r:g}" for r in clip_ratios)]


def candidates_for(weight_quant: QuantizerBase, input_quant: QuantizerBase, percentiles, clip_ratios,
                   more_bits, allow_float: bool) -> tuple[list[Candidate], list[Candidate], list[Candidate]]:
    """The three phases for a layer: activation ranges at the same bits; weight ranges at the same
    bits (none for a log-affine quantizer, whose range is its own search); more bits (for each
    ``b`` in ``more_bits``: the input to ``b``, then both, MSE ranges) and float."""
    methods = range_methods(percentiles, clip_ratios)
    act_phase = [] if isinstance(input_quant, LogAffineQuantizer) else [Candidate(a=m) for m in methods]
    weight_phase = [] if isinstance(weight_quant, LogAffineQuantizer) else [Candidate(w=m) for m in methods]
    # At more bits the best clipping is wider than at the current width: take the MSE-optimal range
    # for that width (a log-affine quantizer its own search) rather than the best one found so far.
    # Wider inputs alone first (the cheaper fix when the input is what hurts, e.g. an RGB image),
    # then both.
    wider = {"w": "laq" if isinstance(weight_quant, LogAffineQuantizer) else "mse",
             "a": "laq" if isinstance(input_quant, LogAffineQuantizer) else "mse"}
    bits_phase = []
    for b in sorted(more_bits):
        if b > input_quant.bits:
            bits_phase.append(Candidate(a=wider["a"], a_bits=b))
        if b > weight_quant.bits:
            bits_phase.append(Candidate(wider["w"], wider["a"], b, max(b, input_quant.bits)))
    if allow_float:
        bits_phase.append(Candidate(float_=True))
    return act_phase, weight_phase, bits_phase


def build_quantizer(old: QuantizerBase, method: str, bits: int, rows: torch.Tensor) -> QuantizerBase:
    """A new quantizer like ``old`` (kind, sign, channels) at ``bits``, its range set by ``method``
    from ``rows`` ([C, N]: the weight's rows, or the observed inputs)."""
    new = make_quantizer(replace(spec_of(old), bits=bits, learnable=False)).to(rows.device)
    if isinstance(new, LogAffineQuantizer):
        new.init_from_rows(rows)
        return new
    kind, _, arg = method.partition(":")
    if kind == "clip":
        new.set_range(*clipped_range(rows.float(), float(arg), bits, old.symmetric))
    else:
        new.set_range(*init_range(rows, kind, bits, old.symmetric, float(arg) if arg else old.percentile))
    return new

"""Quantization settings as a self-validating dataclass.

Every bad value raises :class:`ConfigError` (a ``ValueError``) naming the field, the value and
what is allowed, so a typo in a Hydra override fails at start-up instead of half-way through a calibration.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..core.errors import ConfigError, check_keys

MIN_BITS, MAX_BITS = 2, 8
RANGE_INITS = ("minmax", "percentile", "mse")
GRANULARITIES = ("per_channel", "per_tensor")
LAYER_TYPES = ("Conv2d", "Linear")
LAQ_TARGETS = ("weights", "activations", "both")
# In laq_patterns: the model's own head layers, its ``head_patterns`` (the Detector protocol).
HEAD = "@head"


def check_bits(name: str, value: Any) -> int:
    """Return ``value`` as an int bit width, or raise naming ``name`` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise ConfigError(
            f"{name}={value!r} is not a supported bit width: use an integer from {MIN_BITS} to "
            f"{MAX_BITS} (e.g. quant.{name}=4)."
        )
    return value


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed: choose one of {', '.join(allowed)}.")


@dataclass
class LayerOverride:
    """Bit widths for the layers whose names match ``pattern``; ``None`` keeps the global value,
    ``float_=True`` leaves the matched layers unquantized."""

    pattern: str
    w_bits: int | None = None
    a_bits: int | None = None
    float_: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern={self.pattern!r} must be a non-empty name pattern.")
        for name in ("w_bits", "a_bits"):
            if getattr(self, name) is not None:
                check_bits(f"overrides[{self.pattern!r}].{name}", getattr(self, name))


@dataclass
class QuantConfig:
    """What to quantize and how.

    Weights are quantized symmetrically (signed), per output channel by default; activations
    asymmetrically (with a zero point), per tensor, at the input of every quantized layer.

    Args:
        w_bits, a_bits: weight / activation bit widths, 2 to 8.
        w_granularity, a_granularity: ``per_channel`` or ``per_tensor``.
        w_init, a_init: range initialiser: ``minmax``, ``percentile`` or ``mse`` (search of the
            clipping range that minimises the quantization error).
        percentile: for ``percentile``: the share of values kept inside the range, in (50, 100].
        learnable: make scales (and activation zero points) trainable parameters (LSQ).
        fold_bn: fold BatchNorm into the preceding convolution before quantizing.
        fuse_act: fuse each conv with the activation that follows it (after its BN) into one
            unit (:mod:`~lightning_ptq.quant.fuse`), as a deployed kernel runs them; done when
            :func:`~lightning_ptq.quant.quantize` gets an ``example_input`` (the jobs pass one).
        include, exclude: ``fnmatch`` patterns on module names (``model.head.*``); a layer is
            quantized when it matches an include pattern, no exclude pattern, and ``types``.
        types: layer types to quantize, any of ``Conv2d``, ``Linear``.
        overrides: per-pattern bit widths or float fallback, applied in order (last match wins),
            e.g. ``[{"pattern": "model.stem.conv", "w_bits": 8, "a_bits": 8}]``.
        act_samples: how many activation values per quantizer are kept (random subsample) for
            the percentile / MSE initialisers; min and max are always exact.
        laq_patterns: layers (``fnmatch`` on names, e.g. ``head.box.*``) whose quantizers are the
            learnable log-affine quantizer (:class:`~lightning_ptq.quant.laq.LogAffineQuantizer`)
            instead of the uniform one; its ranges come from its own search, not ``*_init``.
            ``@head`` stands for the model's own head layers (a detector's ``head_patterns``).
        laq_on: what LAQ quantizes in those layers: ``weights``, ``activations`` or ``both``.
        laq_shift_exact: constrain LAQ's slope to ``k = 1/n`` (not learned), so that every level
            is a power of two times a per-channel scale and an integer kernel multiplies by shifts;
            ``False`` learns ``k`` freely (levels then need a float or look-up-table kernel).
    """

    w_bits: int = 4
    a_bits: int = 4
    w_granularity: str = "per_channel"
    a_granularity: str = "per_tensor"
    w_init: str = "mse"
    a_init: str = "percentile"
    percentile: float = 99.99
    learnable: bool = True
    fold_bn: bool = True
    fuse_act: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    types: tuple[str, ...] = LAYER_TYPES
    overrides: tuple[LayerOverride, ...] = field(default_factory=tuple)
    act_samples: int = 1 << 18
    laq_patterns: tuple[str, ...] = ()
    laq_on: str = "weights"
    laq_shift_exact: bool = False

    def __post_init__(self) -> None:
        check_bits("w_bits", self.w_bits)
        check_bits("a_bits", self.a_bits)
        _check_choice("w_granularity", self.w_granularity, GRANULARITIES)
        _check_choice("a_granularity", self.a_granularity, GRANULARITIES)
        _check_choice("w_init", self.w_init, RANGE_INITS)
        _check_choice("a_init", self.a_init, RANGE_INITS)
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile={self.percentile!r} must lie in (50, 100], e.g. 99.99.")
        self.include = tuple(self.include)
        self.exclude = tuple(self.exclude)
        self.types = tuple(self.types)
        if not self.include:
            raise ConfigError("include=() selects no layer: give at least one pattern, e.g. ['*'].")
        for t in self.types:
            _check_choice("types entry", t, LAYER_TYPES)
        self.overrides = tuple(
            o if isinstance(o, LayerOverride) else LayerOverride(**dict(o)) for o in self.overrides
        )
        self.laq_patterns = tuple(self.laq_patterns)
        _check_choice("laq_on", self.laq_on, LAQ_TARGETS)
        if int(self.act_samples) < 1024:
            raise ConfigError(f"act_samples={self.act_samples!r} is too small: use at least 1024.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "QuantConfig":
        """Build from a plain dict (e.g. the ``quant`` group); an unknown key is an error naming
        the closest."""
        check_keys(values, cls, "quant")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_model(self, model) -> "QuantConfig":
        """This config with :data:`HEAD` in ``laq_patterns`` replaced by ``model.head_patterns``,
        and the layers ``model.float_patterns`` names (a detector's fixed post-processing convs,
        e.g. Ultralytics' DFL) excluded."""
        cfg = self
        keep_float = tuple(getattr(model, "float_patterns", ()))
        if keep_float:
            cfg = replace(cfg, exclude=cfg.exclude + keep_float)
        if HEAD in cfg.laq_patterns:
            head = tuple(getattr(model, "head_patterns", None) or ())
            if not head:
                raise ConfigError(
                    f"laq_patterns names {HEAD} (the model's head) but {type(model).__name__} has no head_patterns: "
                    f"give the head's layer patterns instead, e.g. laq_patterns=['head.*'], or implement the Detector "
                    f"protocol (lightning_ptq.core.detector).")
            cfg = replace(cfg, laq_patterns=tuple(p for q in cfg.laq_patterns for p in (head if q == HEAD else (q,))))
        return cfg

    def layer_laq(self, name: str) -> tuple[bool, bool]:
        """Whether layer ``name`` gets LAQ on its (weights, input activations)."""
        from fnmatch import fnmatchcase

        if not any(fnmatchcase(name, p) for p in self.laq_patterns):
            return False, False
        return self.laq_on in ("weights", "both"), self.laq_on in ("activations", "both")

    def layer_bits(self, name: str) -> tuple[int, int] | None:
        """``(w_bits, a_bits)`` for the layer ``name``, or ``None`` if an override keeps it float."""
        from fnmatch import fnmatchcase

        w_bits, a_bits, keep_float = self.w_bits, self.a_bits, False
        for o in self.overrides:
            if fnmatchcase(name, o.pattern):
                keep_float = o.float_
                w_bits = o.w_bits if o.w_bits is not None else w_bits
                a_bits = o.a_bits if o.a_bits is not None else a_bits
        return None if keep_float else (w_bits, a_bits)

    def with_bits(self, w_bits: int, a_bits: int) -> "QuantConfig":
        return replace(self, w_bits=w_bits, a_bits=a_bits)


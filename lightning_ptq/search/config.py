"""The search's settings, validated once, in their constructors: :class:`SearchConfig` for
:func:`~lightning_ptq.search.search_layers`, and :class:`SearchJobConfig`, the job's ``search``
config group (a SearchConfig plus how the job draws the calibration and validation sets), which
is that group's schema in Hydra's ConfigStore."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError, check_keys
from ..quant.config import check_bits

MODES = ("max", "min")


@dataclass
class SearchConfig:
    """Settings of :func:`search_layers` (metric units are those of the evaluator).

    Args:
        mode: ``max`` if a higher metric is better (accuracy, mAP), ``min`` otherwise (NME).
        threshold: a layer whose drop, quantized alone, reaches this is a target.
        max_targets: search at most this many targets (the most sensitive); ``None``: all.
        target: stop when the validation metric reaches this value ...
        max_drop: ... or (when ``target`` is ``None``) when it is within this relative drop of
            the float model (0.01: 1 %).
        tolerance: a layer is done when the metric is within this of the metric with the layer
            in float; also the least gain for a candidate to replace the current parameters.
        max_tries_per_layer, max_evaluations: try budgets, per layer and for the whole search.
        percentiles, clip_ratios: the range candidates besides ``minmax`` and ``mse``.
        more_bits: wider bit widths tried when ranges are not enough (up to 8).
        allow_float: float fallback as the last resort.
        act_samples: input values kept per target layer for the range candidates.
    """

    mode: str = "max"
    threshold: float = 0.005
    max_targets: int | None = None
    target: float | None = None
    max_drop: float | None = 0.01
    tolerance: float = 0.005
    max_tries_per_layer: int = 24
    max_evaluations: int = 400
    percentiles: tuple[float, ...] = (99.9, 99.99)
    clip_ratios: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    more_bits: tuple[int, ...] = (6, 8)
    allow_float: bool = True
    act_samples: int = 1 << 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"search.mode={self.mode!r} is not allowed: choose max or min.")
        for name in ("threshold", "tolerance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"search.{name}={getattr(self, name)!r} must be >= 0.")
        if self.target is None and self.max_drop is None:
            raise ConfigError("search: give target (an absolute metric) or max_drop (relative to float).")
        if self.max_drop is not None and not 0.0 <= self.max_drop < 1.0:
            raise ConfigError(f"search.max_drop={self.max_drop!r} must lie in [0, 1), e.g. 0.01 for 1 %.")
        for name in ("max_tries_per_layer", "max_evaluations", "act_samples") + (("max_targets",) if self.max_targets is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"search.{name}={value!r} must be a positive integer.")
        self.more_bits = tuple(check_bits("search.more_bits entry", b) for b in self.more_bits)
        for r in self.clip_ratios:
            if not 0.0 < r <= 1.0:
                raise ConfigError(f"search.clip_ratios entry {r!r} must lie in (0, 1].")
        for p in self.percentiles:
            if not 50.0 < p <= 100.0:
                raise ConfigError(f"search.percentiles entry {p!r} must lie in (50, 100].")
        self.percentiles, self.clip_ratios = tuple(self.percentiles), tuple(self.clip_ratios)


SELECTIONS = ("balanced", "random")


@dataclass
class SearchJobConfig(SearchConfig):
    """The job's ``search`` group: a :class:`SearchConfig` (``mode`` is the task's: the job sets
    it) plus the sets it searches on.

    Args:
        selection: ``balanced`` (``calib_per_class`` / ``val_per_class`` images of every class) or
            ``random`` (as many images; the baseline).
        calib_per_class, val_per_class: images per class of each set.
        seed: the draw's seed.
    """

    mode: str | None = None  # None in the config group: the job sets the task's direction
    selection: str = "balanced"
    calib_per_class: int = 16
    val_per_class: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in SELECTIONS:
            raise ConfigError(f"search.selection={self.selection!r} is not allowed: choose {' or '.join(SELECTIONS)}.")
        for name in ("calib_per_class", "val_per_class"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"search.{name}={value!r} must be a positive integer.")

    @classmethod
    def from_dict(cls, values: dict) -> "SearchJobConfig":
        """From plain values (the ``search`` group); unknown keys are errors naming the closest."""
        check_keys(values, cls, "search")
        return cls(**values)

"""What :func:`~lightning_ptq.calib.calibrate` does, as typed settings validated once, in their
constructors: a bad value is a :class:`~lightning_ptq.core.ConfigError` naming the field (as the
``calib`` config group spells it), the value and what is allowed; an unknown key (``from_dict``)
names the key, the allowed ones and the closest match."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.errors import ConfigError


def check_keys(values: dict, cls: type, where: str) -> None:
    """ConfigError for a key of ``values`` that the dataclass ``cls`` has no field for."""
    allowed = [f.name for f in fields(cls)]
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"{where}.{key} is not a setting (allowed: {', '.join(allowed)})"
                              + (f"; did you mean {where}.{close[0]}?" if close else "."))


def _int_at_least(where: str, value: Any, low: int, meaning: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{where}={value!r} must be {kind}{meaning}.")


def _positive(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where}={value!r} must be > 0.")


def _at_least_zero(where: str, value: Any, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}={value!r} must be >= 0{meaning}.")


def _probability(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{where}={value!r} must lie in [0, 1).")


@dataclass(frozen=True)
class ReconConfig:
    """Block reconstruction (BRECQ / QDrop style) before the global steps; see
    :func:`~lightning_ptq.calib.recon.reconstruct`.

    Args:
        steps: optimiser steps per block (0: off).
        lr: learning rate of the quantizer parameters.
        weight_lr: > 0: each block's weights and biases are fitted too, in weight grid steps.
        drop_prob: QDrop: probability of bypassing an activation quantizer while fitting.
        max_layers: a block is the largest module with at most this many quantized layers.
    """

    steps: int = 0
    lr: float = 1e-3
    weight_lr: float = 0.0
    drop_prob: float = 0.5
    max_layers: int = 4

    def __post_init__(self) -> None:
        _int_at_least("calib.recon.steps", self.steps, 0, " (0: no block reconstruction)")
        _positive("calib.recon.lr", self.lr)
        _at_least_zero("calib.recon.weight_lr", self.weight_lr, " (0: weights stay fixed)")
        _probability("calib.recon.drop_prob", self.drop_prob)
        _int_at_least("calib.recon.max_layers", self.max_layers, 1)


@dataclass(frozen=True)
class CalibConfig:
    """How :func:`~lightning_ptq.calib.calibrate` calibrates.

    Args:
        steps: optimiser steps of scale learning after the ranges (0: ranges only).
        lr: learning rate of the quantizer parameters.
        init_batches: batches observed for the activation ranges (``None``: all of them).
        drop_prob: QDrop during the steps: each activation quantizer is bypassed element-wise
            with this probability.
        weight_lr: > 0: weights and biases learn too, at this many weight grid steps per update.
        recon: block reconstruction before the steps (:class:`ReconConfig`; a dict is accepted).
    """

    steps: int = 200
    lr: float = 1e-3
    init_batches: int | None = None
    drop_prob: float = 0.0
    weight_lr: float = 0.0
    recon: ReconConfig = field(default_factory=ReconConfig)

    def __post_init__(self) -> None:
        _int_at_least("calib.steps", self.steps, 0, " (0: ranges only)")
        _positive("calib.lr", self.lr)
        if self.init_batches is not None:
            _int_at_least("calib.init_batches", self.init_batches, 1)
        _probability("calib.drop_prob", self.drop_prob)
        _at_least_zero("calib.weight_lr", self.weight_lr, " (0: weights stay fixed)")
        if isinstance(self.recon, dict):
            check_keys(self.recon, ReconConfig, "calib.recon")
            object.__setattr__(self, "recon", ReconConfig(**self.recon))
        elif not isinstance(self.recon, ReconConfig):
            raise ConfigError(f"calib.recon={self.recon!r} must be a ReconConfig or a dict of its settings.")

    @classmethod
    def from_dict(cls, values: dict) -> "CalibConfig":
        """From plain values (e.g. part of the ``calib`` config group); unknown keys are errors."""
        check_keys(values, cls, "calib")
        return cls(**values)

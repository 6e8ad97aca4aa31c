"""What :func:`~lightning_ptq.calib.calibrate` does, as typed settings validated once, in their
constructors: a bad value is a :class:`~lightning_ptq.core.ConfigError` naming the field (as the
``calib`` config group spells it), the value and what is allowed; an unknown key (``from_dict``)
names the key, the allowed ones and the closest match.

:class:`CalibJobConfig` is the whole ``calib`` config group of the job (a :class:`CalibConfig`
plus the loss and what the job reads itself); it is the group's schema in Hydra's ConfigStore
(:mod:`lightning_ptq.hydra_setup`), so a wrong type stops at composition already."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError, check_keys


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


@dataclass
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

    @classmethod
    def from_dict(cls, values: dict) -> "ReconConfig":
        check_keys(values, cls, "calib.recon")
        return cls(**values)


@dataclass
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
        holdout: share of the calibration batches held out of every stage (at least one batch,
            when there are two or more), on which the distillation error is measured before and
            after learning; 0: no held-out check.
        keep_better: when learning made the held-out error worse, go back to the state before
            learning (``False``: keep the learned state and only warn).
    """

    steps: int = 200
    lr: float = 1e-3
    init_batches: int | None = 8
    drop_prob: float = 0.0
    weight_lr: float = 0.0
    recon: ReconConfig = field(default_factory=ReconConfig)
    holdout: float = 0.1
    keep_better: bool = True

    def __post_init__(self) -> None:
        _int_at_least("calib.steps", self.steps, 0, " (0: ranges only)")
        _positive("calib.lr", self.lr)
        if self.init_batches is not None:
            _int_at_least("calib.init_batches", self.init_batches, 1)
        _probability("calib.drop_prob", self.drop_prob)
        _at_least_zero("calib.weight_lr", self.weight_lr, " (0: weights stay fixed)")
        self.recon = _nested(self.recon, ReconConfig, "calib.recon")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) or not 0.0 <= self.holdout < 0.5:
            raise ConfigError(f"calib.holdout={self.holdout!r} must lie in [0, 0.5) (the share of calibration batches "
                              f"held out to check learning; 0: no check).")
        if not isinstance(self.keep_better, bool):
            raise ConfigError(f"calib.keep_better={self.keep_better!r} must be true or false.")

    @classmethod
    def from_dict(cls, values: dict) -> "CalibConfig":
        """From plain values (e.g. the ``calib`` config group); unknown keys are errors."""
        check_keys(values, cls, "calib")
        return cls(**values)


REG_LOSSES = ("giou", "l1")
COMBINES = ("union", "intersection")


@dataclass
class FGLConfig:
    """The filtered global loss's settings (``calib.fgl``), checked when built: see
    :class:`~lightning_ptq.calib.fgl.FilteredGlobalLoss`."""

    conf_thr: float = 2e-4
    iou_thr: float = 0.1
    lambda_reg: float = 1.0
    reg_loss: str = "giou"
    lambda_local: float = 0.0
    combine: str = "intersection"
    filter_cls: bool = False

    def __post_init__(self) -> None:
        for key in ("conf_thr", "iou_thr"):
            if isinstance(getattr(self, key), bool) or not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ConfigError(f"calib.fgl.{key}={getattr(self, key)!r} must lie in [0, 1].")
        for key in ("lambda_reg", "lambda_local"):
            _at_least_zero(f"calib.fgl.{key}", getattr(self, key), "")
        if self.reg_loss not in REG_LOSSES:
            raise ConfigError(f"calib.fgl.reg_loss={self.reg_loss!r} is unknown: choose one of {', '.join(REG_LOSSES)}.")
        if self.combine not in COMBINES:
            raise ConfigError(f"calib.fgl.combine={self.combine!r} is unknown: choose one of {', '.join(COMBINES)}.")

    @classmethod
    def from_dict(cls, values: dict) -> "FGLConfig":
        check_keys(values, cls, "calib.fgl")
        return cls(**values)


@dataclass
class FeaturesConfig:
    """Feature matching's settings (``calib.features``), checked when built; with ``weight=0`` it
    is off; empty ``modules`` stand for the model's own ``feature_modules``. See
    :class:`~lightning_ptq.calib.features.FeatureMatching`."""

    modules: list[str] = field(default_factory=list)
    weight: float = 0.0
    fisher: bool = False

    def __post_init__(self) -> None:
        _at_least_zero("calib.features.weight", self.weight, " (0: off)")
        self.modules = list(self.modules)

    @classmethod
    def from_dict(cls, values: dict) -> "FeaturesConfig":
        check_keys(values, cls, "calib.features")
        return cls(**values)


LOSSES = ("output_mse", "fgl", "keypoint_distill")


def _nested(value: Any, cls: type, where: str):
    """``value`` as a ``cls`` (a dict is checked key by key)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise ConfigError(f"{where}={value!r} must be a {cls.__name__} or a dict of its settings.")


@dataclass
class CalibJobConfig(CalibConfig):
    """The job's ``calib`` config group: a :class:`CalibConfig` (what ``calibrate`` receives, as
    is) plus the settings the job reads itself.

    Args:
        num_images: calibration images taken from the calib split.
        image_seed: ``None``: the split's first ``num_images``; a number: ``num_images`` drawn
            from the whole split in an order this seed sets (benchmarks vary it with the seed).
        batch_size: images per calibration batch.
        loss: the distillation loss, one of ``LOSSES`` (``fgl`` needs a detector,
            ``keypoint_distill`` a keypoint model).
        fgl: the filtered global loss's settings (:class:`FGLConfig`).
        features: feature matching added to the loss (:class:`FeaturesConfig`).
        layer_params: a search's ``layer_params.json``, applied instead of calibrating.
        quantized_state: a run's ``quantized_state_dict.pt``, loaded instead of calibrating.
        resume: continue an interrupted calibration from the run folder's ``calib_ckpt``.
        (the rest: see :class:`CalibConfig`)
    """

    num_images: int = 256
    image_seed: int | None = None
    batch_size: int = 16
    loss: str = "output_mse"
    fgl: FGLConfig = field(default_factory=FGLConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    layer_params: str | None = None
    quantized_state: str | None = None
    resume: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _int_at_least("calib.num_images", self.num_images, 1)
        _int_at_least("calib.batch_size", self.batch_size, 1)
        if self.loss not in LOSSES:
            raise ConfigError(f"calib.loss={self.loss!r} is unknown: choose one of {', '.join(LOSSES)}.")
        self.fgl = _nested(self.fgl, FGLConfig, "calib.fgl")
        self.features = _nested(self.features, FeaturesConfig, "calib.features")

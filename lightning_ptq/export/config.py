"""The export step's settings (the ``export`` config group), validated once, in the constructor;
it is that group's schema in Hydra's ConfigStore. ``formats=[]`` (``export=none``) exports
nothing and checks nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import ConfigError, check_keys
from .errors import INT4_OPSET
from .onnx import MIN_OPSET, require
from .runtimes import RUNTIMES

FORMATS = ("onnx", "integer")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"export.{name}={value!r} must be a positive integer.")


@dataclass
class ExportConfig:
    """What the export step writes and measures (:func:`~lightning_ptq.export.deploy.deploy`).

    Args:
        formats: ``onnx`` (a QDQ graph run in ``runtimes``) and / or ``integer`` (the integer
            executor); empty: no export.
        runtimes: the ONNX runtimes to measure in, among ``RUNTIMES``.
        opset: ONNX opset, at least 13 (21 for 4-bit layers' int4 / uint4 types).
        threads: runtime CPU threads (``None``: the runtime's default).
        speed_batch: images per call in the images/s measurement.
        speed_seconds: timed seconds per measurement.
        compare_batches: calibration batches the output differences are measured on.
    """

    formats: list[str] = field(default_factory=list)
    runtimes: list[str] = field(default_factory=lambda: list(RUNTIMES))
    opset: int = INT4_OPSET
    threads: int | None = None
    speed_batch: int = 32
    speed_seconds: float = 2.0
    compare_batches: int = 2

    def __post_init__(self) -> None:
        self.formats, self.runtimes = list(self.formats), list(self.runtimes)
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ConfigError(f"export.formats has {bad}: choose among {', '.join(FORMATS)} (or export=none).")
        if not self.formats:
            return
        if "onnx" in self.formats:
            bad = [r for r in self.runtimes if r not in RUNTIMES]
            if bad or not self.runtimes:
                raise ConfigError(f"export.runtimes={self.runtimes} must list one or more of {', '.join(RUNTIMES)}.")
            if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < MIN_OPSET:
                raise ConfigError(f"export.opset={self.opset!r} must be an integer >= {MIN_OPSET} "
                                  f"({INT4_OPSET} for 4-bit layers).")
        for name in ("speed_batch", "compare_batches"):
            _positive_int(name, getattr(self, name))
        if self.threads is not None:
            _positive_int("threads", self.threads)
        if isinstance(self.speed_seconds, bool) or not self.speed_seconds > 0:
            raise ConfigError(f"export.speed_seconds={self.speed_seconds!r} must be > 0.")

    @classmethod
    def from_dict(cls, values: dict) -> "ExportConfig":
        """From plain values (the ``export`` group); unknown keys are errors naming the closest."""
        check_keys(values, cls, "export")
        return cls(**values)

    def require_installed(self) -> None:
        """An error saying what to install when a chosen runtime (or onnx itself) is missing."""
        if "onnx" in self.formats:
            require("onnx", "onnxscript", *self.runtimes)

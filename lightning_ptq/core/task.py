"""What one kind of model (a detector, a keypoint model, a classifier) gives the shared job.

The job (:func:`lightning_ptq.job.run_job`) quantizes, calibrates, evaluates, searches, exports,
saves and reports the same way for every kind; a :class:`Task` supplies what differs: its data
and FP model, its evaluation, its calibration (and search validation) sets, its extra results,
its table and its figure. The config chooses the task by ``model.task._target_``; the job builds
it with the run's config.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .distributed import one_process


@runtime_checkable
class Task(Protocol):
    """One kind of model; built as ``Task(cfg)`` with the run's whole config."""

    name: str           # "detector", "keypoint" or "classifier": which distillation losses fit
    metric: str         # the headline key of evaluate()'s dict ("map", "nme", "acc")
    metric_label: str   # how tables name it ("mAP@[.5:.95]")
    maximize: bool      # whether a larger metric is better (the search's direction)
    searchable: bool    # whether the per-layer search can run on it

    def check(self) -> None:
        """Fail on settings of this task that cannot work, before anything is loaded or written."""

    def load(self) -> tuple[Any, nn.Module]:
        """The data module and the FP model (eval mode); later calls use them."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The metrics of ``model`` on the test split."""

    def calibration_sets(self, search: Any | None) -> tuple[list, Callable[[nn.Module], float] | None]:
        """The calibration batches and, for a search (``search``: its
        :class:`~lightning_ptq.search.SearchJobConfig`, ``None`` without), the validation metric
        it optimises."""

    def extra_results(self, fp: dict, quant: dict) -> dict:
        """Numbers of this task for ``results.json`` beyond the shared ones."""

    def table(self, results: dict):
        """The printed FP-vs-quantized table (a rich renderable)."""

    def table_rows(self, results: dict) -> tuple[list[str], list[list]]:
        """The same table as columns and rows, for W&B."""

    def figure(self, fp_model: nn.Module, qmodel: nn.Module, run_dir: Path, title: str) -> tuple[Path, str] | None:
        """A picture of FP vs quantized outputs and its W&B key, or None."""


class TaskBase:
    """What the tasks share: the run's config, the data module once loaded, no settings of their
    own to check. Subclass it, or implement :class:`Task` from scratch."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.datamodule = None

    def check(self) -> None:
        pass  # the model and data settings are checked where they are read


def training_settings(cfg: DictConfig) -> dict:
    """The ``trainer`` settings for pretraining a model: those of one process, whatever the job's
    strategy, so that the cached model is the same however many processes calibrate."""
    return one_process(OmegaConf.to_container(cfg.trainer, resolve=True))


def prepared_datamodule(cfg: DictConfig):
    """The data module ``cfg.data`` describes, batched as ``cfg.calib.batch_size``, with its data
    prepared (the default data generated on first use) and its splits loaded."""
    datamodule = instantiate(cfg.data, batch_size=cfg.calib.batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


MEMBERS = ("name", "metric", "metric_label", "maximize", "searchable", "check", "load", "evaluate",
           "calibration_sets", "extra_results", "table", "table_rows", "figure")


def missing_members(obj: object) -> list[str]:
    """The :class:`Task` members that ``obj`` lacks (empty when it implements the protocol)."""
    return [m for m in MEMBERS if not hasattr(obj, m)]

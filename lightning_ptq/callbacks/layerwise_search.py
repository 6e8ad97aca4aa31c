"""Lightning callback: search per-layer quantization parameters against the user's own
validation metric, the one their LightningModule logs in ``validation_step``."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import Metric

from ..calib.api import BatchList
from ..calib.observe import ForwardFn, default_forward
from ..quant.swap import quantized_layers
from ..search.layerwise import SearchConfig, SearchResult, search_layers
from ..search.report import write_search_report
from .quantization import calibration_source


@contextmanager
def metrics_of_this_process(module: nn.Module) -> Iterator[None]:
    """Every torchmetrics ``Metric`` in ``module`` computes on this process's updates alone while
    inside: under DDP the ranks evaluate different candidates at once, and a metric that gathered
    across them would mix the candidates (or wait for a rank that computes nothing)."""
    metrics = [m for m in module.modules() if isinstance(m, Metric)]
    saved = [m.distributed_available_fn for m in metrics]
    for m in metrics:
        m.distributed_available_fn = lambda: False
    try:
        yield
    finally:
        for m, fn in zip(metrics, saved):
            m.distributed_available_fn = fn


class MetricNotLoggedError(KeyError):
    """The monitored metric is not among those the LightningModule logs in validation."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class LayerwiseSearch(Callback):
    """At the first validation (``trainer.validate(...)``), after the model is quantized and
    calibrated (put :class:`~lightning_ptq.callbacks.QuantizationCallback` before this one),
    search per-layer parameters with ``monitor`` as the metric; the validation then reports the
    searched model.

    Each evaluation runs the module's own validation loop (``validation_step`` and its
    ``self.log`` calls) on the validation batches, held in memory, with a quiet inner Trainer.
    Under DDP every rank searches, each evaluating its share of every round of candidates on its
    whole validation set, and all make the same choices; rank 0 writes the report.

    Args:
        monitor: the logged metric to optimise, e.g. ``"val/acc"``.
        mode: ``max`` or ``min`` (overrides ``config.mode``).
        config: a :class:`~lightning_ptq.search.SearchConfig` or a dict of its fields.
        val_dataloader: the validation set (default: the datamodule's ``val_dataloader()``).
        calib_dataloader: the calibration set for range candidates (default: the datamodule's
            ``calib_dataloader()``, else ``train_dataloader()``); ``num_calib_batches`` of it.
        submodule: attribute of the LightningModule holding the quantized network (``None``: the
            module itself).
        output_dir: where ``layer_params.json``, ``search.json`` and ``sensitivity.png`` go
            (default: ``<trainer.default_root_dir>/layerwise_search``).
    """

    def __init__(self, monitor: str, mode: str = "max", config: SearchConfig | dict[str, Any] | None = None,
                 val_dataloader: Iterable | None = None, calib_dataloader: Iterable | None = None,
                 num_calib_batches: int | None = 8, submodule: str | None = None,
                 forward_fn: ForwardFn = default_forward, output_dir: str | Path | None = None) -> None:
        values = asdict(config) if isinstance(config, SearchConfig) else dict(config or {})
        self.config = SearchConfig(**{**values, "mode": mode})
        self.monitor, self.submodule, self.forward_fn = monitor, submodule, forward_fn
        self.val_dataloader, self.calib_dataloader = val_dataloader, calib_dataloader
        self.num_calib_batches, self.output_dir = num_calib_batches, output_dir
        self.result: SearchResult | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.result is not None:
            return
        target = getattr(pl_module, self.submodule) if self.submodule else pl_module
        if not quantized_layers(target):
            raise ValueError("LayerwiseSearch found no quantized layer: put a QuantizationCallback before it "
                             "in callbacks=[...] (or quantize and calibrate the model first).")
        val = BatchList([trainer.strategy.batch_to_device(b, pl_module.device) for b in self._val_batches(trainer)])
        source = calibration_source(trainer, self.calib_dataloader, "LayerwiseSearch")
        calib = [trainer.strategy.batch_to_device(b, pl_module.device)
                 for b in itertools.islice(source, self.num_calib_batches)]
        inner = L.Trainer(accelerator=trainer.accelerator, devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[])

        def evaluate(_: nn.Module) -> float:
            metrics = inner.validate(pl_module, dataloaders=val, verbose=False)[0]
            pl_module.trainer = trainer  # the inner run took the module over
            if self.monitor not in metrics:
                raise MetricNotLoggedError(
                    f"monitor={self.monitor!r} is never logged by {type(pl_module).__name__}.validation_step; "
                    f"it logs {sorted(metrics) or 'nothing'}. Log it with self.log({self.monitor!r}, ...) or "
                    f"choose one of those."
                )
            return float(metrics[self.monitor])

        with metrics_of_this_process(pl_module):  # under DDP the ranks share the evaluations
            self.result = search_layers(target, calib, evaluate, self.config,
                                        forward_fn=lambda _, batch: self.forward_fn(target, batch),
                                        progress=trainer.progress_bar_callback is not None and trainer.is_global_zero)
        if trainer.is_global_zero:
            self._report(trainer, target)

    def _val_batches(self, trainer: L.Trainer) -> Iterable:
        if self.val_dataloader is not None:
            return self.val_dataloader
        if trainer.datamodule is not None:
            return trainer.datamodule.val_dataloader()
        raise ValueError("LayerwiseSearch has no validation data: pass val_dataloader=... or use a datamodule.")

    def _report(self, trainer: L.Trainer, model: nn.Module) -> None:
        out = self.output_dir or Path(trainer.default_root_dir) / "layerwise_search"
        write_search_report(self.result, model, out, self.config.threshold, self.monitor, trainer.logger)

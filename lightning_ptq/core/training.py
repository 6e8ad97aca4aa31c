"""Lightning runs that the library starts on the user's behalf (calibration, pretraining of the
default models): without Lightning's start-up lines, tips and warnings about what the library
does on purpose, and with one progress display that counts steps out of the total.

On a terminal the progress is a bar; otherwise (a log file, a CI job) it is a log line every
``every_s`` seconds, so that a long pretraining does not go silent.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# What Lightning says about choices the library makes on purpose: modules kept in eval mode
# while calibrating (frozen BN), a small in-memory calibration set without workers.
_EXPECTED_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode",
    r".*isinstance\(treespec, LeafSpec\)",
    r"The '\w+_dataloader' does not have many workers",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # the calibration's resume folder also holds the state before learning (the held-out check)
    r"Checkpoint directory .* exists and is not empty",
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info lines (accelerator banner, tips, "fit stopped") and the warnings
    above for the duration; warnings about anything else still show."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        rank_zero.setLevel(level)


class StepProgress(L.Callback):
    """Training progress as ``<what>: step n / total``, with the loss and the last validation
    metrics: a bar on a terminal, else a log line every ``every_s`` seconds."""

    def __init__(self, what: str, every_s: float = 30.0):
        self.what, self.every_s = what, every_s
        self.bar, self.total, self.last = None, 0, 0.0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        per_epoch = trainer.num_training_batches
        self.total = trainer.max_steps if trainer.max_steps > 0 else trainer.max_epochs * per_epoch
        if sys.stderr.isatty():
            self.bar = tqdm(total=self.total, initial=trainer.global_step, desc=self.what, leave=False,
                            dynamic_ncols=True)
        self.last = time.monotonic()

    def _status(self, trainer: L.Trainer) -> str:
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("loss") or k.startswith("val/")}
        return ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(self._status(trainer), refresh=False)
        elif time.monotonic() - self.last >= self.every_s or step >= self.total:
            self.last = time.monotonic()
            log.info("%s: step %d/%d (epoch %d) %s", self.what, step, self.total, trainer.current_epoch,
                     self._status(trainer))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def library_trainer(what: str, **kwargs) -> L.Trainer:
    """A Trainer for a run the library makes (build and fit it inside :func:`quiet_lightning`):
    Lightning's progress bar is replaced by :class:`StepProgress` when ``enable_progress_bar``
    is on, and there is no model summary."""
    callbacks = list(kwargs.pop("callbacks", []))
    if kwargs.pop("enable_progress_bar", True):
        callbacks.append(StepProgress(what))
    kwargs.setdefault("enable_model_summary", False)
    return L.Trainer(callbacks=callbacks, enable_progress_bar=False, **kwargs)

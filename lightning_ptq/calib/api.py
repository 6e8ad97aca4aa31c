"""Plain-Python calibration entry point: no Lightning or Hydra code needed on the user's side."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ..core.io import resume_checkpoint
from ..core.training import library_trainer, quiet_lightning
from .config import CalibConfig
from .module import CalibrationModule
from .observe import ForwardFn, calibrate_ranges, default_forward
from .recon import qdrop_hooks, reconstruct


def calibrate(
    fp_model: nn.Module,
    qmodel: nn.Module,
    batches: Iterable,
    config: CalibConfig | None = None,
    *,
    loss=None,
    forward_fn: ForwardFn = default_forward,
    checkpoint_dir: str | Path | None = None,
    trainer_kwargs: dict | None = None,
) -> nn.Module:
    """Calibrate ``qmodel`` (from :func:`lightning_ptq.quantize`) against ``fp_model`` as
    ``config`` (:class:`~lightning_ptq.calib.config.CalibConfig`, default settings if ``None``)
    says:

    1. ranges: every quantizer is initialised on ``batches`` (the first ``config.init_batches``);
    2. block reconstruction, when ``config.recon.steps > 0``: each block fitted to its own float
       output (:func:`~lightning_ptq.calib.recon.reconstruct`);
    3. learning (``config.steps > 0``): scales and zero points are fine-tuned for that many
       optimiser steps with a distillation ``loss`` (default: output MSE), cycling over
       ``batches``; with ``drop_prob > 0`` each activation quantizer is bypassed element-wise with
       that probability while learning (QDrop), which flattens the solution; with
       ``weight_lr > 0`` the quantized layers' weights and biases learn as well, at that many
       steps of their weight grid per update (see :class:`CalibrationModule`).

    ``batches`` is any re-iterable of batches (a DataLoader, a list of tensors or of
    ``(images, targets)`` tuples); ``forward_fn(model, batch)`` runs a model on one. With
    ``checkpoint_dir``, the learning stage saves ``last.ckpt`` there and an interrupted call
    resumes from it. ``trainer_kwargs`` go to the Lightning Trainer of the learning stage
    (accelerator, devices, precision, progress bar). Returns ``qmodel``.
    """
    config = CalibConfig() if config is None else config
    if not isinstance(config, CalibConfig):
        raise TypeError(f"calibrate: config must be a CalibConfig, got {type(config).__name__} "
                        f"(e.g. calibrate(fp, q, batches, CalibConfig(steps=100))).")
    if not isinstance(batches, (list, tuple)) and iter(batches) is batches:
        batches = list(batches)  # a one-shot iterator cannot be cycled over several epochs
    if isinstance(batches, (list, tuple)):
        batches = BatchList(batches)  # Lightning would read a list as several dataloaders
    resume = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
    progress = (trainer_kwargs or {}).get("enable_progress_bar", True)
    if resume is None or not resume.exists():  # otherwise the checkpoint holds the result of 1 and 2
        calibrate_ranges(qmodel, batches, config.init_batches, forward_fn, progress=progress)
        if config.recon.steps > 0:
            reconstruct(qmodel, batches, forward_fn=forward_fn, checkpoint_dir=checkpoint_dir, progress=progress,
                        **asdict(config.recon))
    steps = config.steps
    if steps <= 0:
        return qmodel
    module = CalibrationModule(fp_model, qmodel, loss=loss, lr=config.lr, max_steps=steps, forward_fn=forward_fn,
                               failure_dir=checkpoint_dir, weight_lr=config.weight_lr)
    callbacks = []
    if checkpoint_dir:
        callbacks.append(resume_checkpoint(checkpoint_dir, every_n_train_steps=max(steps // 10, 1)))
    kwargs = dict(
        max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=bool(checkpoint_dir),
        callbacks=callbacks, num_sanity_val_steps=0,
    )
    kwargs.update(trainer_kwargs or {})
    hooks = qdrop_hooks(qmodel, config.drop_prob) if config.drop_prob > 0 else []
    try:
        with quiet_lightning():
            trainer = library_trainer("calibrating", **kwargs)
            trainer.fit(module, train_dataloaders=batches,
                        ckpt_path=str(resume) if resume and resume.exists() else None)
    finally:
        for h in hooks:
            h.remove()
        if hasattr(module.loss, "detach"):  # on_fit_end is skipped when fitting stops with an error
            module.loss.detach()
    return qmodel


class BatchList:
    """A fixed list of batches that Lightning iterates as one dataloader."""

    def __init__(self, items) -> None:
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

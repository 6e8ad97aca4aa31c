"""Plain-Python calibration entry point: no Lightning or Hydra code needed on the user's side."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import distributed
from ..core.io import atomic_torch_save, resume_checkpoint
from ..core.training import library_trainer, quiet_lightning
from ..core.tree import batch_size
from .config import CalibConfig
from .losses import OutputMSE, check_distillable
from .module import CalibrationModule
from .observe import ForwardFn, calibrate_ranges, default_forward
from .recon import qdrop_hooks, reconstruct

log = logging.getLogger(__name__)

BEFORE_LEARNING = "before_learning.pt"  # in checkpoint_dir: the state that keep_better can go back to


@dataclass
class CalibrationReport:
    """What :func:`calibrate` measured on the held-out calibration batches (``None`` when there was
    no learning stage or nothing to hold out).

    Attributes:
        holdout_images: images held out of every stage.
        holdout_loss_before: the distillation error on them before learning (after the ranges and
            block reconstruction).
        holdout_loss_after: the same after learning.
        kept: ``"learned"``, or ``"before_learning"`` when learning made that error worse and
            ``keep_better`` put the earlier state back.
        ranks: how many processes calibrated together.
        rank_difference: with several, the largest absolute difference between a rank's
            calibrated state and rank 0's (0.0: every rank holds the same model).
    """

    holdout_images: int = 0
    holdout_loss_before: float | None = None
    holdout_loss_after: float | None = None
    kept: str = "learned"
    ranks: int = 1
    rank_difference: float | None = None

    def results(self) -> dict:
        """The report as ``calib.*`` entries of a results dict."""
        return {f"calib.{k}": v for k, v in asdict(self).items() if v is not None}


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
) -> CalibrationReport:
    """Calibrate ``qmodel`` (from :func:`lightning_ptq.quantize`) in place against ``fp_model`` as
    ``config`` (:class:`~lightning_ptq.calib.config.CalibConfig`, default settings if ``None``)
    says:

    0. with ``config.holdout > 0``, a learning stage and two batches or more, the last batches
       (that share, at least one) are held out of every stage below;
    1. ranges: every quantizer is initialised on ``batches`` (the first ``config.init_batches``);
    2. block reconstruction, when ``config.recon.steps > 0``: each block fitted to its own float
       output (:func:`~lightning_ptq.calib.recon.reconstruct`);
    3. learning (``config.steps > 0``): scales and zero points are fine-tuned for that many
       optimiser steps with a distillation ``loss`` (default: output MSE), cycling over
       ``batches``; with ``drop_prob > 0`` each activation quantizer is bypassed element-wise with
       that probability while learning (QDrop), which flattens the solution; with
       ``weight_lr > 0`` the quantized layers' weights and biases learn as well, at that many
       steps of their weight grid per update (see :class:`CalibrationModule`);
    4. the distillation error on the held-out batches before and after learning is compared:
       when learning made it worse, a warning says so and (``config.keep_better``) the state
       before learning is put back.

    ``batches`` is any re-iterable of batches (a DataLoader, a list of tensors or of
    ``(images, targets)`` tuples); ``forward_fn(model, batch)`` runs a model on one. Under
    ``torch.distributed`` (several ranks) every rank passes its own share of every batch
    (:func:`lightning_ptq.core.distributed.shard`) and ``trainer_kwargs`` name the DDP strategy:
    the ranges observed by all ranks are merged, block reconstruction and learning average their
    gradients over the ranks, the held-out error is the mean over every rank's share, and only
    rank 0 writes checkpoints. With
    ``checkpoint_dir``, the learning stage saves ``last.ckpt`` there and an interrupted call
    resumes from it. ``trainer_kwargs`` go to the Lightning Trainer of the learning stage
    (accelerator, devices, precision, progress bar). Returns the :class:`CalibrationReport`.
    """
    config = CalibConfig() if config is None else config
    if not isinstance(config, CalibConfig):
        raise TypeError(f"calibrate: config must be a CalibConfig, got {type(config).__name__} "
                        f"(e.g. calibrate(fp, q, batches, CalibConfig(steps=100))).")
    # The stages set their own requires_grad flags and train / eval modes on both models (and
    # Lightning leaves what it fitted in train mode); the caller's come back afterwards, so that a
    # test loop after the callbacks runs in eval mode and fine-tuning finds its weights trainable.
    requires_grad = {p: p.requires_grad for model in (fp_model, qmodel) for p in model.parameters()}
    modes = {m: m.training for model in (fp_model, qmodel) for m in model.modules()}
    try:
        return _calibrate(fp_model, qmodel, batches, config, loss, forward_fn, checkpoint_dir, trainer_kwargs)
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        for m, training in modes.items():
            m.training = training


def _calibrate(fp_model, qmodel, batches, config: CalibConfig, loss, forward_fn, checkpoint_dir,
               trainer_kwargs) -> CalibrationReport:
    if not isinstance(batches, (list, tuple)) and iter(batches) is batches:
        batches = list(batches)  # a one-shot iterator cannot be cycled over several epochs
    if isinstance(batches, (list, tuple)):
        batches = BatchList(batches)  # Lightning would read a list as several dataloaders
    steps, loss = config.steps, loss or OutputMSE()
    held = []
    if steps > 0 and config.holdout > 0:
        items = list(batches)  # once: a shuffling loader must not mix held-out and learned batches
        count = min(len(items) - 1, max(1, round(len(items) * config.holdout))) if len(items) > 1 else 0
        if count:
            batches, held = BatchList(items[:-count]), items[-count:]
    # only the learning stage resumes: without one, a last.ckpt left in checkpoint_dir is not this calibration's
    resume = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir and steps > 0 else None
    progress = (trainer_kwargs or {}).get("enable_progress_bar", True)
    if resume is None or not resume.exists():  # otherwise the checkpoint holds the result of 1 and 2
        calibrate_ranges(qmodel, batches, config.init_batches, forward_fn, progress=progress)
        if config.recon.steps > 0:
            reconstruct(qmodel, batches, forward_fn=forward_fn, checkpoint_dir=checkpoint_dir, progress=progress,
                        **asdict(config.recon))
    report = CalibrationReport(holdout_images=distributed.sum_over_ranks(sum(map(batch_size, held))),
                               ranks=distributed.world_size())
    if steps <= 0:
        return _with_rank_difference(report, qmodel)
    before = _state_before_learning(fp_model, qmodel, held, loss, forward_fn, checkpoint_dir)
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
    if before is not None:
        state, report.holdout_loss_before = before
        report.holdout_loss_after = held_out_loss(fp_model, qmodel, held, loss, forward_fn)
        worse = report.holdout_loss_after > report.holdout_loss_before  # the same on every rank
        if worse and config.keep_better:
            qmodel.load_state_dict(state)
            report.kept = "before_learning"
        if distributed.rank() == 0:
            _say_held_out(report, worse, config.keep_better)
    return _with_rank_difference(report, qmodel)


def _say_held_out(report: CalibrationReport, worse: bool, keep_better: bool) -> None:
    if worse:
        action = "went back to the state before learning" if keep_better else \
            "kept the learned state (calib.keep_better=false)"
        log.warning("calibration: learning made the distillation error on the %d held-out images worse "
                    "(%.5g before, %.5g after); %s.", report.holdout_images, report.holdout_loss_before,
                    report.holdout_loss_after, action)
    else:
        log.info("calibration: distillation error on the %d held-out images %.5g before learning, %.5g after.",
                 report.holdout_images, report.holdout_loss_before, report.holdout_loss_after)


def _with_rank_difference(report: CalibrationReport, qmodel: nn.Module) -> CalibrationReport:
    if report.ranks > 1:
        report.rank_difference = distributed.difference_from_rank_zero(qmodel)
    return report


@torch.no_grad()
def held_out_loss(fp_model: nn.Module, qmodel: nn.Module, held: list, loss, forward_fn: ForwardFn) -> float:
    """The mean distillation error of ``qmodel`` against ``fp_model`` over the ``held`` batches
    (of every rank, under ``torch.distributed``): ``loss`` as it compares outputs (its base loss
    when it also matches features)."""
    measure = getattr(loss, "base", loss)
    modes = fp_model.training, qmodel.training
    fp_model.eval()
    qmodel.eval()
    try:
        total = 0.0
        for batch in held:
            student, teacher = forward_fn(qmodel, batch), forward_fn(fp_model, batch)
            check_distillable(student, teacher)
            total += float(measure(student, teacher)[0])
        return distributed.mean_over_ranks(total, len(held))
    finally:
        fp_model.train(modes[0])
        qmodel.train(modes[1])


def _state_before_learning(fp_model, qmodel, held: list, loss, forward_fn, checkpoint_dir) -> tuple[dict, float] | None:
    """The student's state before learning and its held-out error (``None`` without held-out
    batches); kept in ``checkpoint_dir`` too, so that a resumed calibration can still go back."""
    if not held:
        return None
    path = Path(checkpoint_dir) / BEFORE_LEARNING if checkpoint_dir else None
    if path is not None and path.exists() and (path.parent / "last.ckpt").exists():
        saved = torch.load(path, weights_only=True, map_location="cpu")
        return saved["state_dict"], saved["holdout_loss"]
    state = {k: v.detach().clone() for k, v in qmodel.state_dict().items()}
    error = held_out_loss(fp_model, qmodel, held, loss, forward_fn)
    if path is not None and distributed.rank() == 0:
        atomic_torch_save({"state_dict": state, "holdout_loss": error}, path)
    return state, error


class BatchList:
    """A fixed list of batches that Lightning iterates as one dataloader."""

    def __init__(self, items) -> None:
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

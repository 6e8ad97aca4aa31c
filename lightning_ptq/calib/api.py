"""Plain-Python calibration entry point: no Lightning or Hydra code needed on the user's side."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import nn

from ..core.io import resume_checkpoint
from ..core.training import library_trainer, quiet_lightning
from .module import CalibrationModule
from .observe import ForwardFn, calibrate_ranges, default_forward
from .recon import qdrop_hooks, reconstruct


def calibrate(
    fp_model: nn.Module,
    qmodel: nn.Module,
    batches: Iterable,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    loss=None,
    num_init_batches: int | None = None,
    forward_fn: ForwardFn = default_forward,
    checkpoint_dir: str | Path | None = None,
    trainer_kwargs: dict | None = None,
    recon: dict | None = None,
    drop_prob: float = 0.0,
    weight_lr: float = 0.0,
) -> nn.Module:
    """Calibrate ``qmodel`` (from :func:`lightning_ptq.quantize`) against ``fp_model``.

    1. ranges: every quantizer is initialised on ``batches`` (the first ``num_init_batches``);
    2. block reconstruction, when ``recon`` has ``steps > 0``: keyword arguments of
       :func:`~lightning_ptq.calib.recon.reconstruct` (``steps``, ``lr``, ``drop_prob``,
       ``max_layers``, ...), each block fitted to its own output with quantization switched off;
    3. learning (``steps > 0``): scales and zero points are fine-tuned for ``steps`` optimiser
       steps with a distillation ``loss`` (default: output MSE), cycling over ``batches``;
       with ``drop_prob > 0`` each activation quantizer is bypassed element-wise with that
       probability while learning (QDrop), which flattens the solution; with ``weight_lr > 0``
       the quantized layers' weights and biases learn as well, at that many steps of their weight
       grid per update (see :class:`CalibrationModule`).

    ``batches`` is any re-iterable of batches (a DataLoader, a list of tensors or of
    ``(images, targets)`` tuples). With ``checkpoint_dir``, the learning stage saves
    ``last.ckpt`` there and an interrupted call resumes from it. Returns ``qmodel``.
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob={drop_prob!r} must lie in [0, 1).")
    if not isinstance(batches, (list, tuple)) and iter(batches) is batches:
        batches = list(batches)  # a one-shot iterator cannot be cycled over several epochs
    if isinstance(batches, (list, tuple)):
        batches = BatchList(batches)  # Lightning would read a list as several dataloaders
    resume = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
    progress = (trainer_kwargs or {}).get("enable_progress_bar", True)
    if resume is None or not resume.exists():  # otherwise the checkpoint holds the result of 1 and 2
        calibrate_ranges(qmodel, batches, num_init_batches, forward_fn, progress=progress)
        recon = dict(recon or {})
        if recon.get("steps", 0) > 0:
            reconstruct(qmodel, batches, forward_fn=forward_fn, checkpoint_dir=checkpoint_dir,
                        progress=progress, **recon)
    if steps <= 0:
        return qmodel
    module = CalibrationModule(fp_model, qmodel, loss=loss, lr=lr, max_steps=steps, forward_fn=forward_fn,
                               failure_dir=checkpoint_dir, weight_lr=weight_lr)
    callbacks = []
    if checkpoint_dir:
        callbacks.append(resume_checkpoint(checkpoint_dir, every_n_train_steps=max(steps // 10, 1)))
    kwargs = dict(
        max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=bool(checkpoint_dir),
        callbacks=callbacks, num_sanity_val_steps=0,
    )
    kwargs.update(trainer_kwargs or {})
    hooks = qdrop_hooks(qmodel, drop_prob) if drop_prob > 0 else []
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

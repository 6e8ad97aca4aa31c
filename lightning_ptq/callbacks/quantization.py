"""Lightning callback: quantize the user's own LightningModule and calibrate it inside their Trainer,
without changing its code.

The calibration is the one the job runs (:func:`lightning_ptq.calibrate`): ranges, optional
block reconstruction, then learned scales (and, with ``weight_lr``, weights) under a distillation
loss against a float copy of the network, with the held-out check; :class:`RegPTQCallback` adds
the log-affine head quantizer and the filtered global loss for detectors.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ..calib import CalibConfig, calibrate
from ..calib.observe import ForwardFn, default_forward
from ..core import distributed
from ..core.errors import ConfigError
from ..core.tree import batch_inputs, batch_size
from ..quant.config import QuantConfig
from ..quant.swap import LayerPatternError, quantize, quantized_layers

log = logging.getLogger(__name__)

SENTINEL = "lightning_ptq_quantized_by_"  # + the callback's class name: a buffer on the quantized network


def _processes(trainer: L.Trainer) -> dict:
    """Settings that make the calibration Trainer run on the user's processes, when there are
    several: every rank calibrates on its share of every batch and they average their gradients."""
    if distributed.world_size() == 1:
        return {}
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if not isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            f"calibration on several processes runs with strategy='ddp' (processes that each run the script, "
            f"torchrun and SLURM included), not {type(trainer.strategy).__name__} with "
            f"{type(trainer.strategy.launcher).__name__}: give the Trainer strategy='ddp'.")
    return {"strategy": "ddp", "devices": trainer.num_devices, "num_nodes": trainer.num_nodes}


def calibration_source(trainer: L.Trainer, calib_dataloader: Iterable | None, owner: str) -> Iterable:
    """``calib_dataloader`` if given, else the datamodule's ``calib_dataloader()``, else its
    ``train_dataloader()``."""
    if calib_dataloader is not None:
        return calib_dataloader
    dm = trainer.datamodule
    for name in ("calib_dataloader", "train_dataloader"):
        if dm is not None and hasattr(dm, name):
            return getattr(dm, name)()
    raise ValueError(
        f"{owner} has no calibration data: pass calib_dataloader=... or use a LightningDataModule with a "
        f"calib_dataloader() or train_dataloader() method."
    )


class QuantizationCallback(Callback):
    """Quantize ``pl_module`` (or its ``submodule``) and calibrate it, inside the user's Trainer.

    * ``setup`` folds BN, fuses conv + activation (found on the first calibration batch, as the
      jobs do) and swaps the selected layers, before Lightning restores a checkpoint, so
      ``Trainer.fit(ckpt_path=...)`` and ``Trainer.test(ckpt_path=...)`` load a calibrated
      quantized checkpoint into the swapped model. A *float* checkpoint given to
      ``fit(ckpt_path=...)`` is quantized on load and calibrated, and fitting then fine-tunes
      the quantized model (quantization-aware training) from epoch 0 with fresh optimizer state.
    * At the start of fit / validate / test / predict an uncalibrated model is calibrated with
      :func:`lightning_ptq.calibrate` on ``num_images`` images of ``calib_dataloader`` (or the
      datamodule's ``calib_dataloader()``, else its ``train_dataloader()``): ranges, block
      reconstruction when ``calib.recon.steps > 0``, learned scales (``calib.steps``; weights too
      with ``calib.weight_lr``) against a float copy taken before swapping, and the held-out
      check; an interrupted calibration resumes (``resume``). The calibration Trainer takes the
      user's accelerator and precision.

    Args:
        config: a :class:`QuantConfig` (or a dict of its fields); default: the job's.
        calib: a :class:`~lightning_ptq.CalibConfig` (or a dict of its fields); default: the
            job's (ranges, then 200 steps of learned scales).
        calib_dataloader: batches to calibrate on.
        num_images: how many images of it (the job's 256 by default).
        submodule: attribute name of the network inside the LightningModule to quantize
            (``None``: the whole LightningModule).
        forward_fn: ``(module, batch) -> output``; default: ``module(<input of the batch>)``, where
            the input is the batch itself, its first element (a tensor, or a list of image
            tensors as in torchvision's detection batches ``(images, targets)``) or a usual key
            of a dict batch.
        loss: the distillation loss ``(student_out, teacher_out) -> (loss, parts)``; default:
            MSE over every output.
        resume: keep the learning stage's checkpoints in
            ``<default_root_dir>/lightning_ptq_calibration/<callback>-<hash of its settings>``
            so that an interrupted calibration resumes (removed once it finished).
    """

    def __init__(
        self,
        config: QuantConfig | dict[str, Any] | None = None,
        calib: CalibConfig | dict[str, Any] | None = None,
        calib_dataloader: Iterable | None = None,
        num_images: int = 256,
        submodule: str | None = None,
        forward_fn: ForwardFn = default_forward,
        loss=None,
        resume: bool = True,
    ) -> None:
        self.config = config if isinstance(config, QuantConfig) else QuantConfig.from_dict(dict(config or {}))
        self.calib = calib if isinstance(calib, CalibConfig) else CalibConfig.from_dict(dict(calib or {}))
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images={num_images!r} must be a positive integer (calibration images).")
        self.calib_dataloader, self.num_images = calib_dataloader, num_images
        self.submodule, self.forward_fn, self.loss, self.resume = submodule, forward_fn, loss, resume
        self._teacher: nn.Module | None = None   # the float network the calibration distils
        self._example = None                      # the first calibration batch's inputs
        self._float_hook = None                   # the pre-hook that quantizes a float checkpoint on load
        self._from_float = False                  # the restored checkpoint was a float one ...
        self._float_checkpoint: dict | None = None  # ... this one, whose training state fit() replaces

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        network = self.network(pl_module)
        if quantized_layers(network):
            return
        self._teacher = _detached_copy(network, trainer).eval()
        self.swap(trainer, pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._calibrate_if_needed(trainer, pl_module)
        if self._float_checkpoint is not None:
            self._fresh_training_state(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._calibrate_if_needed(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._calibrate_if_needed(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._calibrate_if_needed(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._from_float:
            self._float_checkpoint = checkpoint  # its training state is replaced in on_fit_start

    # -- overridable steps ---------------------------------------------------------------------
    def target(self, pl_module: L.LightningModule) -> nn.Module:
        """The module of ``pl_module`` that is quantized (``submodule``, or the LightningModule);
        its state is what a checkpoint holds."""
        if self.submodule is None:
            return pl_module
        if not hasattr(pl_module, self.submodule):
            raise AttributeError(
                f"submodule={self.submodule!r}: {type(pl_module).__name__} has no such attribute; "
                f"its children are {[n for n, _ in pl_module.named_children()]}."
            )
        return getattr(pl_module, self.submodule)

    def network(self, pl_module: L.LightningModule) -> nn.Module:
        """The module that is quantized and calibrated (its layer names are the config's): the
        target, or a view of it that shares its modules under the same names."""
        return self.target(pl_module)

    def calibration_loss(self, network: nn.Module):
        return self.loss

    def swap(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fold BN, fuse activations on an example batch and swap the selected layers in place;
        mark the network and let it take a float checkpoint (see the class docstring)."""
        network, target = self.network(pl_module), self.target(pl_module)
        self._example = self._example_input(trainer)
        try:
            quantize(network, self.config, inplace=True, example_input=self._example)
        except LayerPatternError as err:
            raise LayerPatternError(self._pattern_message(err, pl_module), err.pattern, err.candidates) from None
        # The marker names this callback in the error a load without it gives; without the marker a
        # checkpoint is a float one (see _quantize_float_state).
        target.register_buffer(SENTINEL + type(self).__name__, torch.ones(()))
        self._float_hook = target._register_load_state_dict_pre_hook(self._quantize_float_state, with_module=True)

    def is_calibrated(self, pl_module: L.LightningModule) -> bool:
        return all(bool(q.initialized) for layer in quantized_layers(self.network(pl_module)).values()
                   for q in layer.quantizers)

    def calibration_batches(self, trainer: L.Trainer) -> Iterable:
        return calibration_source(trainer, self.calib_dataloader, type(self).__name__)

    def calibrate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Calibrate the network on ``num_images`` calibration images (see the class docstring)."""
        network = self.network(pl_module)
        if self._teacher is None:
            raise RuntimeError(f"{type(self).__name__}: the model is quantized but not calibrated, and there is no "
                               f"float copy to calibrate it against (it was quantized before this callback saw it).")
        batches = [trainer.strategy.batch_to_device(b, pl_module.device)
                   for b in distributed.shard(self._take(trainer), f"{type(self).__name__}'s calibration batches")]
        checkpoint_dir = self.checkpoint_dir(trainer) if self.resume else None
        inner = {"accelerator": trainer.accelerator, "precision": trainer.precision, "devices": 1,
                 "enable_progress_bar": trainer.progress_bar_callback is not None} | _processes(trainer)
        try:
            report = calibrate(self._teacher.to(pl_module.device), network, batches, self.calib,
                               loss=self.calibration_loss(network), forward_fn=self.forward_fn,
                               checkpoint_dir=checkpoint_dir, trainer_kwargs=inner)
        finally:  # the calibration Trainer took over the LightningModules it ran (the network may be one)
            pl_module.trainer = trainer
        if distributed.rank() == 0:
            log.info("%s: calibrated on %d images per process; %s", type(self).__name__,
                     sum(map(batch_size, batches)), report)
        if checkpoint_dir is not None and distributed.rank() == 0:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # only an interrupted calibration resumes
            with contextlib.suppress(OSError):  # the parent goes too when no other calibration is pending there
                checkpoint_dir.parent.rmdir()
        self._teacher = None

    def checkpoint_dir(self, trainer: L.Trainer) -> Path:
        """Where an interrupted calibration resumes from: one folder per callback class and
        settings, so that a calibration never resumes from another one's checkpoint."""
        settings = json.dumps([repr(self.config), repr(self.calib), self.num_images, self.submodule], sort_keys=True)
        key = hashlib.sha256(settings.encode()).hexdigest()[:12]
        return Path(trainer.default_root_dir) / "lightning_ptq_calibration" / f"{type(self).__name__}-{key}"

    def _take(self, trainer: L.Trainer) -> list:
        taken, seen = [], 0
        for batch in self.calibration_batches(trainer):
            taken.append(batch)
            seen += batch_size(batch)
            if seen >= self.num_images:
                break
        return taken

    def _example_input(self, trainer: L.Trainer):
        first = next(iter(itertools.islice(self.calibration_batches(trainer), 1)), None)
        if first is None:
            return None
        try:
            return batch_inputs(first)
        except TypeError:
            log.warning("%s: the calibration batches are not (images, ...) batches, so conv + activation units are "
                        "not fused (they are quantized as separate layers).", type(self).__name__)
            return None

    def _calibrate_if_needed(self, trainer, pl_module) -> None:
        if self._float_hook is not None:  # a checkpoint is restored before these hooks: the pre-hook is done
            self._float_hook.remove()
            self._float_hook = None
        if self.is_calibrated(pl_module):
            self._teacher = None  # restored from a calibrated checkpoint: the float copy is not needed
            return
        # hooks of evaluation loops run under inference mode; learning needs autograd
        with torch.inference_mode(False), torch.enable_grad():
            self.calibrate(trainer, pl_module)

    def _quantize_float_state(self, target, state_dict, prefix, *args) -> None:
        """Load-state-dict pre-hook of the quantized target: a float checkpoint (no marker) is
        turned into the quantized network's state (BN folded, quantizers not calibrated yet), and
        its float network becomes the calibration's teacher."""
        if any(k.startswith(prefix + SENTINEL) for k in state_dict):
            return
        float_state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        teacher = self._teacher
        teacher.load_state_dict(float_state)
        quantized = quantize(teacher, self.config, example_input=self._example)
        quantized.register_buffer(SENTINEL + type(self).__name__, torch.ones(()))
        for key in float_state:
            del state_dict[prefix + key]
        state_dict.update({prefix + k: v for k, v in quantized.state_dict().items()})
        self._from_float = True
        log.info("%s: the checkpoint holds a float model; it is quantized and will be calibrated.", type(self).__name__)

    def _fresh_training_state(self, trainer: L.Trainer) -> None:
        """Fitting from a float checkpoint fine-tunes the quantized model from its start: the
        float optimizer state does not fit the quantized parameters, so the checkpoint's training
        state becomes the fresh one (epoch 0)."""
        checkpoint = self._float_checkpoint
        checkpoint["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        checkpoint.pop("loops", None)
        self._from_float, self._float_checkpoint = False, None

    def _pattern_message(self, err: LayerPatternError, pl_module: L.LightningModule) -> str:
        where = f"submodule={self.submodule!r}" if self.submodule else "the whole LightningModule (submodule=None)"
        return (f"{type(self).__name__}: layer pattern {err.pattern!r} matches no {'/'.join(self.config.types)} layer "
                f"of {where} ({type(self.network(pl_module)).__name__}); its layers are named like: "
                f"{', '.join(err.candidates[:8]) or '(none)'}. Fix the callback's arguments: "
                f"{self._pattern_arguments()}, or submodule='<attribute of {type(pl_module).__name__} holding the "
                f"network>' (its children: {[n for n, _ in pl_module.named_children()]}).")

    def _pattern_arguments(self) -> str:
        return "config=QuantConfig(include=..., exclude=..., overrides=..., laq_patterns=...)"

    # -- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "calib": asdict(self.calib)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = QuantConfig.from_dict(state_dict["config"])
        if saved != self.config:
            raise ValueError(
                f"the checkpoint was quantized with {saved} but this {type(self).__name__} has "
                f"{self.config}: use the same configuration to resume or test it."
            )


def _detached_copy(module: nn.Module, trainer: L.Trainer) -> nn.Module:
    """A deep copy of ``module`` that does not copy the Trainer a LightningModule points to."""
    return copy.deepcopy(module, memo={id(trainer): None})

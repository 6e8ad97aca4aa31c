"""The calibration LightningModule: the float teacher and the quantized student see the same
calibration images, and only the student's quantizer parameters learn from a distillation loss."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch import nn

from ..core import UserError
from ..core.io import atomic_torch_save
from ..core.tree import first_non_finite_module
from ..quant.layers import QuantLayerMixin
from ..quant.swap import quantizer_parameters, quantizers
from .losses import OutputMSE, check_distillable
from .observe import ForwardFn, default_forward

LAST_GOOD = "last_good_quantized.pt"


class NonFiniteLossError(UserError, FloatingPointError):
    """The calibration loss became NaN or inf."""


class CalibrationModule(L.LightningModule):
    """Learn the quantization parameters of ``student`` by distilling ``teacher``.

    Both models stay in eval mode (BN statistics and dropout frozen) even while Lightning trains;
    the teacher never changes. The student's quantizer parameters (scales, zero points, log-affine
    parameters) learn; its weights and biases stay as they are unless ``weight_lr > 0``.

    Args:
        teacher: the float model.
        student: ``quantize(teacher)`` after :func:`calibrate_ranges`.
        loss: ``(student_out, teacher_out) -> (loss, parts)``; default :class:`OutputMSE`.
        lr: Adam learning rate for scales and zero points; cosine-decayed over ``max_steps``.
        max_steps: length of the schedule (the Trainer's ``max_steps``).
        weight_lr: > 0: the quantized layers' weights and biases learn too (AdaQuant-style weight
            tuning under the same loss), with a cosine-decayed Adam learning rate of ``weight_lr``
            weight quantization steps of their layer (:func:`weight_step`), so that one value
            suits every bit width; 0: they stay.
        forward_fn: how to run a model on a batch (default: the input tensor of the batch).
        failure_dir: where the student's last good state is written if the loss turns NaN / inf.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        loss=None,
        lr: float = 1e-3,
        max_steps: int = 200,
        forward_fn: ForwardFn = default_forward,
        failure_dir: str | Path | None = None,
        weight_lr: float = 0.0,
    ) -> None:
        super().__init__()
        if lr <= 0 or max_steps < 1:
            raise ValueError(f"lr={lr!r} must be > 0 and max_steps={max_steps!r} >= 1.")
        if weight_lr < 0:
            raise ValueError(f"weight_lr={weight_lr!r} must be >= 0 (0: weights stay fixed).")
        self.teacher, self.student = teacher, student
        self.loss = loss or OutputMSE()
        self.lr, self.max_steps, self.forward_fn, self.weight_lr = lr, max_steps, forward_fn, weight_lr
        self.failure_dir = Path(failure_dir) if failure_dir else None
        self.teacher.requires_grad_(False)
        for p in self.student.parameters():
            p.requires_grad_(False)
        for q in quantizers(self.student).values():
            q.enable_param_learning(True)
        for group in weight_groups(self.student, self.weight_lr):
            for p in group["params"]:
                p.requires_grad_(True)

    def on_fit_start(self) -> None:
        if hasattr(self.loss, "attach"):  # a loss that reads intermediate features (FeatureMatching)
            self.loss.attach(self.teacher, self.student)

    def on_fit_end(self) -> None:
        if hasattr(self.loss, "detach"):
            self.loss.detach()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        self.student.eval()
        return self

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            teacher_out = self.forward_fn(self.teacher, batch)
        student_out = self.forward_fn(self.student, batch)
        check_distillable(student_out, teacher_out)
        loss, parts = self.loss(student_out, teacher_out)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self._non_finite_message(loss, batch))
        self.log("calib/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"calib/{name}", value)
        return loss

    def _non_finite_message(self, loss: torch.Tensor, batch) -> str:
        """Say where the NaN / inf comes from and keep the last good student state on disk."""
        bad = [n for n, q in quantizers(self.student).items()
               if not all(torch.isfinite(p).all() for p in q.learnable_parameters())]
        if bad:  # the previous update broke them: the periodic checkpoint is the last good state
            where = f"non-finite quantizer parameters in {bad[:5]}"
            kept = "the last good state is the last periodic checkpoint (last.ckpt) if checkpoint_dir was given"
        else:  # nothing was updated with this loss yet, so the current state is still good
            culprit = first_non_finite_module(self.student, batch, self.forward_fn)
            where = (f"first non-finite output in module {culprit!r}" if culprit
                     else "re-running the batch gives finite outputs in every module: the loss itself overflowed")
            if self.failure_dir is not None:
                path = atomic_torch_save(self.student.state_dict(), self.failure_dir / LAST_GOOD)
                kept = f"the last good quantized state_dict is saved in {path}"
            else:
                kept = "give checkpoint_dir to keep the last good state on disk"
        return (f"calibration loss is {loss.item()} at step {self.global_step} ({where}); {kept}. "
                f"Lower calib.lr or check the calibration images.")

    def configure_optimizers(self):
        params = quantizer_parameters(self.student)
        if not params:
            raise ValueError("the student has no learnable quantizer parameter (QuantConfig.learnable=False?).")
        opt = torch.optim.Adam([{"params": params, "lr": self.lr}, *weight_groups(self.student, self.weight_lr)])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine_schedule(opt, self.max_steps), "interval": "step"}}


def weight_groups(model: nn.Module, weight_lr: float) -> list[dict]:
    """One Adam parameter group per quantized layer of ``model`` (weight and bias), its learning
    rate ``weight_lr`` steps of that layer's weight grid; none when ``weight_lr`` is 0."""
    if weight_lr == 0:
        return []
    layers = [m for m in model.modules() if isinstance(m, QuantLayerMixin)]
    return [{"params": [p for p in (m.weight, m.bias) if p is not None], "lr": weight_lr * weight_step(m)}
            for m in layers]


@torch.no_grad()
def weight_step(layer: QuantLayerMixin) -> float:
    """The size of one step of ``layer``'s weight grid at its bit width: the mean over output
    channels of ``max|w| / (2^(bits-1) - 1)`` (a 4-bit grid's step is 18 times an 8-bit one's)."""
    w = layer.weight.detach()
    levels = (1 << (layer.weight_quant.bits - 1)) - 1
    return (w.abs().flatten(1).amax(1) / levels).mean().item()


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate decayed from its initial value to 0 along a half cosine over ``steps``
    scheduler steps, then held at 0."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))

"""The calibration LightningModule: the float teacher and the quantized student see the same
calibration images, and only the student's quantizer parameters learn from a distillation loss."""
from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from ..quant.swap import quantizer_parameters, quantizers
from .losses import OutputMSE
from .observe import ForwardFn, default_forward


class NonFiniteLossError(FloatingPointError):
    """The calibration loss became NaN or inf."""


class CalibrationModule(L.LightningModule):
    """Learn the quantization parameters of ``student`` by distilling ``teacher``.

    Both models stay in eval mode (BN statistics and dropout frozen) even while Lightning trains;
    the teacher and the student's weights never change, only scales and zero points do.

    Args:
        teacher: the float model.
        student: ``quantize(teacher)`` after :func:`calibrate_ranges`.
        loss: ``(student_out, teacher_out) -> (loss, parts)``; default :class:`OutputMSE`.
        lr: Adam learning rate for scales and zero points; cosine-decayed over ``max_steps``.
        max_steps: length of the schedule (the Trainer's ``max_steps``).
        forward_fn: how to run a model on a batch (default: the input tensor of the batch).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        loss=None,
        lr: float = 1e-3,
        max_steps: int = 200,
        forward_fn: ForwardFn = default_forward,
    ) -> None:
        super().__init__()
        if lr <= 0 or max_steps < 1:
            raise ValueError(f"lr={lr!r} must be > 0 and max_steps={max_steps!r} >= 1.")
        self.teacher, self.student = teacher, student
        self.loss = loss or OutputMSE()
        self.lr, self.max_steps, self.forward_fn = lr, max_steps, forward_fn
        self.teacher.requires_grad_(False)
        for p in self.student.parameters():
            p.requires_grad_(False)
        for q in quantizers(self.student).values():
            q.enable_param_learning(True)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        self.student.eval()
        return self

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            teacher_out = self.forward_fn(self.teacher, batch)
        student_out = self.forward_fn(self.student, batch)
        loss, parts = self.loss(student_out, teacher_out)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self._non_finite_message(loss))
        self.log("calib/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"calib/{name}", value)
        return loss

    def _non_finite_message(self, loss: torch.Tensor) -> str:
        bad = [
            n for n, q in quantizers(self.student).items()
            if not all(torch.isfinite(p).all() for p in q.learnable_parameters())
        ]
        where = f"non-finite quantizer parameters in {bad[:5]}" if bad else "all quantizer parameters are finite"
        return (
            f"calibration loss is {loss.item()} at step {self.global_step} ({where}). The last "
            f"good quantizer state is in the last checkpoint; lower calib.lr or check the inputs."
        )

    def configure_optimizers(self):
        params = quantizer_parameters(self.student)
        if not params:
            raise ValueError("the student has no learnable quantizer parameter (QuantConfig.learnable=False?).")
        opt = torch.optim.Adam(params, lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, self.max_steps) / self.max_steps))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

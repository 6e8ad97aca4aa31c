"""The fake-quant module: observer + scale / zero point + straight-through op.

Life cycle (as in ``torch.ao`` fake quantizers, the switches are buffers so they are saved in
checkpoints and replicated under DDP):

1. ``enable_observation()``: pass values through unchanged and record them;
2. ``finalize()``: compute scale / zero point from what was recorded (or ``init_from(tensor)``
   for weights), then fake-quantize in every forward;
3. ``enable_param_learning()``: scale / zero point receive gradients (LSQ);
4. ``disable()``: identity, e.g. to measure one layer's sensitivity.
"""
from __future__ import annotations

import torch
from torch import nn

from .ranges import init_range
from .ste import fake_quantize, qrange


class FakeQuantizer(nn.Module):
    """Uniform affine fake quantizer, per tensor or per channel.

    Args:
        bits: code width, 2 to 8.
        symmetric: signed code with zero point 0 (weights); otherwise unsigned with a learnable
            zero point (activations).
        channel_axis: axis along which ``scale`` varies, ``None`` for per tensor.
        num_channels: size of that axis (so that the parameter shapes are known before any data,
            which lets checkpoints load into a freshly swapped model).
        init: range initialiser, ``minmax`` | ``percentile`` | ``mse``.
        max_samples: how many observed values are kept for the percentile / MSE initialisers.
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        channel_axis: int | None = None,
        num_channels: int = 1,
        init: str = "mse",
        percentile: float = 99.99,
        learnable: bool = True,
        max_samples: int = 1 << 18,
    ) -> None:
        super().__init__()
        self.bits, self.symmetric = bits, symmetric
        self.channel_axis = channel_axis
        self.init, self.percentile, self.max_samples = init, percentile, max_samples
        self.q_min, self.q_max = qrange(bits, signed=symmetric)
        self.scale = nn.Parameter(torch.ones(num_channels), requires_grad=learnable)
        self.zero_point = nn.Parameter(
            torch.zeros(num_channels), requires_grad=learnable and not symmetric
        )
        self.register_buffer("fake_quant_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._samples: list[torch.Tensor] = []

    # -- modes ---------------------------------------------------------------------------------
    def enable_observation(self) -> None:
        self._samples = []
        self.observer_enabled.fill_(1)
        self.fake_quant_enabled.fill_(0)

    def finalize(self) -> None:
        """Set scale / zero point from the values recorded since ``enable_observation``."""
        if not self._samples:
            raise RuntimeError(
                "finalize() was called but this quantizer observed no values: run the calibration "
                "batches through the model between enable_observation() and finalize()."
            )
        self.init_from(torch.cat(self._samples, dim=1), rows_ready=True)
        self._samples = []
        self.observer_enabled.fill_(0)

    def init_from(self, x: torch.Tensor, rows_ready: bool = False) -> None:
        """Set scale / zero point from ``x`` with this quantizer's initialiser, then enable it."""
        rows = x if rows_ready else self._rows(x.detach())
        scale, zero_point = init_range(rows, self.init, self.bits, self.symmetric, self.percentile)
        with torch.no_grad():
            self.scale.copy_(scale.to(self.scale).expand_as(self.scale))
            self.zero_point.copy_(zero_point.to(self.zero_point).expand_as(self.zero_point))
        self.initialized.fill_(1)
        self.fake_quant_enabled.fill_(1)

    def enable_param_learning(self, enabled: bool = True) -> None:
        self.scale.requires_grad_(enabled)
        self.zero_point.requires_grad_(enabled and not self.symmetric)

    def disable(self) -> None:
        self.fake_quant_enabled.fill_(0)

    def enable(self) -> None:
        if not self.initialized:
            raise RuntimeError("enable() before the quantizer was initialised: calibrate it first.")
        self.fake_quant_enabled.fill_(1)

    @property
    def is_active(self) -> bool:
        return bool(self.fake_quant_enabled) and bool(self.initialized)

    # -- forward -------------------------------------------------------------------------------
    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """View ``x`` as ``[C, N]``: one row per channel (or a single row)."""
        if self.channel_axis is None:
            return x.reshape(1, -1)
        return x.transpose(0, self.channel_axis).reshape(x.shape[self.channel_axis], -1)

    def _observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x.detach()).float()
        kept = sum(s.shape[1] for s in self._samples)
        budget = max(self.max_samples - kept, 0)
        # Exact extremes always; a random subsample of the rest for percentile / MSE.
        extremes = torch.stack([rows.amin(dim=1), rows.amax(dim=1)], dim=1)
        if budget and rows.shape[1] > budget:
            rows = rows[:, torch.randperm(rows.shape[1], device=rows.device)[:budget]]
        self._samples.append(torch.cat([extremes, rows[:, :budget]], dim=1).cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled:
            self._observe(x)
        if not (self.fake_quant_enabled and self.initialized):
            return x
        return fake_quantize(
            x, self.scale, self.zero_point, self.q_min, self.q_max, self.channel_axis,
            lsq_grad=self.scale.requires_grad,
        )

    def extra_repr(self) -> str:
        gran = "per_tensor" if self.channel_axis is None else f"per_channel(axis={self.channel_axis})"
        state = "on" if self.is_active else ("observing" if self.observer_enabled else "off")
        return (
            f"bits={self.bits}, {'symmetric' if self.symmetric else 'asymmetric'}, {gran}, "
            f"init={self.init}, {state}"
        )

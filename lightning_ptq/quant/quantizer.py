"""Fake-quant modules: an observer (:mod:`.observer`) + quantization parameters + a
straight-through op (:mod:`.ste`).

Life cycle (as in ``torch.ao`` fake quantizers, the switches are buffers so they are saved in
checkpoints and replicated under DDP):

1. ``enable_observation()``: pass values through unchanged, recorded by the observer;
2. ``finalize()``: set the quantization parameters from what it recorded (or
   ``init_from(tensor)`` for weights), then fake-quantize in every forward;
3. ``enable_param_learning()``: the parameters receive gradients;
4. ``disable()``: identity, e.g. to measure one layer's sensitivity.

:class:`QuantizerBase` holds that life cycle; subclasses say how parameters are initialised
(``_init_params``) and how values are quantized (``quantize``).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .observer import SampleObserver, channel_rows
from .ranges import init_range
from .ste import fake_quantize, qrange

MIN_STEP = 1e-12  # floor of a grid step, so that x / step stays finite


class QuantizerBase(nn.Module):
    """Modes, observation and forward shared by every fake quantizer.

    Args:
        bits: code width, 2 to 8.
        channel_axis: axis along which parameters vary, ``None`` for per tensor.
        num_channels: size of that axis (parameter shapes are known before any data, so a
            checkpoint loads into a freshly swapped model).
        max_samples: how many observed values the observer keeps for the initialisers (min and
            max of each batch are always kept).
    """

    def __init__(self, bits: int, channel_axis: int | None = None, num_channels: int = 1,
                 max_samples: int = 1 << 18) -> None:
        super().__init__()
        self.bits, self.channel_axis, self.num_channels = bits, channel_axis, num_channels
        self.observer = SampleObserver(channel_axis, max_samples)
        self.register_buffer("fake_quant_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    # -- to implement --------------------------------------------------------------------------
    def _init_params(self, rows: torch.Tensor) -> None:
        """Set the parameters from observed values ``rows`` of shape ``[C, N]``."""
        raise NotImplementedError

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (differentiable, straight-through rounding)."""
        raise NotImplementedError

    def learnable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` in ``[0, 2^bits)`` (int64); ``decode(codes(x)) == quantize(x)``."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Float values of integer ``codes`` (shaped like the tensor they came from)."""
        raise NotImplementedError

    # -- modes ---------------------------------------------------------------------------------
    def enable_observation(self) -> None:
        self.observer.reset()
        self.observer_enabled.fill_(1)
        self.fake_quant_enabled.fill_(0)

    def finalize(self) -> None:
        """Set the parameters from the values recorded since ``enable_observation``."""
        if not self.observer.has_values:
            raise RuntimeError(
                "finalize() was called but this quantizer observed no values: run the calibration "
                "batches through the model between enable_observation() and finalize()."
            )
        self._init_params(self.observer.rows())
        self.observer.reset()
        self.observer_enabled.fill_(0)
        self.mark_initialized()

    def init_from(self, x: torch.Tensor) -> None:
        """Set the parameters from the tensor ``x`` (e.g. a weight), then enable quantization."""
        self.init_from_rows(self.channel_rows(x.detach()))

    def init_from_rows(self, rows: torch.Tensor) -> None:
        """Set the parameters from values ``rows`` ``[C, N]`` (one row per channel), then enable
        quantization."""
        self._init_params(rows.float())
        self.mark_initialized()

    def mark_initialized(self) -> None:
        """The parameters hold a range (set or loaded): quantize from now on."""
        self.initialized.fill_(1)
        self.fake_quant_enabled.fill_(1)

    def enable_param_learning(self, enabled: bool = True) -> None:
        for p in self.learnable_parameters():
            p.requires_grad_(enabled)

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
    def channel_rows(self, x: torch.Tensor) -> torch.Tensor:
        """View ``x`` as ``[C, N]`` along this quantizer's channel axis."""
        return channel_rows(x, self.channel_axis)

    def _param_shape(self, x: torch.Tensor) -> list[int]:
        """Shape that broadcasts a ``[C]`` parameter along ``channel_axis`` of ``x``."""
        shape = [1] * x.dim()
        if self.channel_axis is not None:
            shape[self.channel_axis] = -1
        return shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled:
            self.observer(x)
        if not (self.fake_quant_enabled and self.initialized):
            return x
        return self.quantize(x)

    def _state_repr(self) -> str:
        gran = "per_tensor" if self.channel_axis is None else f"per_channel(axis={self.channel_axis})"
        state = "on" if self.is_active else ("observing" if self.observer_enabled else "off")
        return f"bits={self.bits}, {gran}, {state}"


class UniformQuantizer(QuantizerBase):
    """Uniform affine fake quantizer with LSQ-learnable scale (and zero point).

    Args:
        symmetric: signed code with zero point 0 (weights); otherwise an unsigned code with a
            learnable zero point (activations).
        init: range initialiser, ``minmax`` | ``percentile`` | ``mse``.
        learnable: scale / zero point are trainable parameters.
        (other arguments: see :class:`QuantizerBase`)
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
        super().__init__(bits, channel_axis, num_channels, max_samples)
        self.symmetric, self.init, self.percentile = symmetric, init, percentile
        self.q_min, self.q_max = qrange(bits, signed=symmetric)
        self.scale = nn.Parameter(torch.ones(num_channels), requires_grad=learnable)
        self.zero_point = nn.Parameter(torch.zeros(num_channels), requires_grad=learnable and not symmetric)

    def _init_params(self, rows: torch.Tensor) -> None:
        self._copy_range(*init_range(rows, self.init, self.bits, self.symmetric, self.percentile))

    def _copy_range(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(scale.to(self.scale).expand_as(self.scale))
            self.zero_point.copy_(zero_point.to(self.zero_point).expand_as(self.zero_point))

    def set_range(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Set the parameters directly (e.g. a searched clipping range), then enable quantization."""
        self._copy_range(scale, zero_point)
        self.mark_initialized()

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [self.scale] if self.symmetric else [self.scale, self.zero_point]

    def step(self) -> torch.Tensor:
        """The grid step, ``|scale|`` (at least ``MIN_STEP``): a learned scale can cross zero while
        calibrating, and its sign means nothing (a negative one would mirror the clipping range,
        which no integer runtime represents)."""
        return self.scale.abs().clamp_min(MIN_STEP)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(
            x, self.step(), self.zero_point, self.q_min, self.q_max, self.channel_axis,
            lsq_grad=self.scale.requires_grad,
        )

    def _integer_zero_point(self, shape: list[int]) -> torch.Tensor:
        return torch.round(self.zero_point).clamp(self.q_min, self.q_max).reshape(shape)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        shape = self._param_shape(x)
        q = torch.round(x / self.step().reshape(shape)) + self._integer_zero_point(shape)
        return (q.clamp(self.q_min, self.q_max) - self.q_min).to(torch.int64)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        shape = self._param_shape(codes)
        return (codes.float() + self.q_min - self._integer_zero_point(shape)) * self.step().reshape(shape)

    def extra_repr(self) -> str:
        return f"{'symmetric' if self.symmetric else 'asymmetric'}, init={self.init}, {self._state_repr()}"


@contextmanager
def quantization_disabled(target: nn.Module | Iterable[QuantizerBase]) -> Iterator[None]:
    """Inside the block every quantizer of ``target`` (a model, or the quantizers themselves)
    passes values through; afterwards each is back on or off as it was."""
    qs = [m for m in target.modules() if isinstance(m, QuantizerBase)] if isinstance(target, nn.Module) else list(target)
    was_on = [bool(q.fake_quant_enabled) for q in qs]
    for q in qs:
        q.disable()
    try:
        yield
    finally:
        for q, on in zip(qs, was_on):
            if on:
                q.enable()

"""The observer of a fake quantizer: it records the values that pass through while a range is
being calibrated, and nothing else (the range initialisers in :mod:`.ranges` turn what it kept
into quantization parameters; the quantizer in :mod:`.quantizer` owns one and switches it on).

Kept per channel: the exact minimum and maximum of every batch, and a random subsample of the
values up to ``max_samples`` for the percentile and MSE searches. Calibrating on several
processes, each observer merges what every rank saw before the range is set (:meth:`gather_ranks`)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class NonFiniteObservationError(FloatingPointError):
    """NaN or inf reached an observer (``.observer`` is the one)."""

    def __init__(self, observer: "SampleObserver") -> None:
        super().__init__("NaN or inf among the values observed for a quantization range.")
        self.observer = observer


def channel_rows(x: torch.Tensor, channel_axis: int | None) -> torch.Tensor:
    """View ``x`` as ``[C, N]``: one row per channel along ``channel_axis`` (a single row when it
    is ``None``)."""
    if channel_axis is None:
        return x.reshape(1, -1)
    return x.transpose(0, channel_axis).reshape(x.shape[channel_axis], -1)


class SampleObserver(nn.Module):
    """Records the values of the tensors it is called on (returned unchanged), as ``[C, N]`` rows.

    Args:
        channel_axis: axis of the channels, ``None`` for one row over the whole tensor.
        max_samples: values kept per channel beyond the extremes (a random subsample).

    It has no parameters or buffers: what it records is working memory for the range
    initialisers, not part of a checkpoint.
    """

    def __init__(self, channel_axis: int | None = None, max_samples: int = 1 << 18) -> None:
        super().__init__()
        self.channel_axis, self.max_samples = channel_axis, max_samples
        self._samples: list[torch.Tensor] = []

    def reset(self) -> None:
        self._samples = []

    @property
    def has_values(self) -> bool:
        return bool(self._samples)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = channel_rows(x.detach(), self.channel_axis).float()
        if not torch.isfinite(rows).all():  # one NaN would poison the range for good
            raise NonFiniteObservationError(self)
        kept = sum(s.shape[1] for s in self._samples)
        budget = max(self.max_samples - kept, 0)
        extremes = torch.stack([rows.amin(dim=1), rows.amax(dim=1)], dim=1)
        if budget and rows.shape[1] > budget:
            rows = rows[:, torch.randperm(rows.shape[1], device=rows.device)[:budget]]
        self._samples.append(torch.cat([extremes, rows[:, :budget]], dim=1).cpu())
        return x

    def gather_ranks(self) -> None:
        """Under ``torch.distributed`` with several ranks, make what this observer recorded the
        union of what every rank recorded (extremes and subsamples; every rank must call it, for
        its quantizers in the same order), so that every rank derives the same range: min / max
        exactly, percentiles and the MSE search from the merged values."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        everyone: list[torch.Tensor | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, self.rows() if self._samples else None)
        recorded = [rows for rows in everyone if rows is not None]
        self._samples = [torch.cat(recorded, dim=1)] if recorded else []

    def rows(self) -> torch.Tensor:
        """Everything recorded since the last :meth:`reset`, as ``[C, N]`` (extremes included)."""
        if not self._samples:
            raise RuntimeError("this observer recorded no values: run batches through it first.")
        return torch.cat(self._samples, dim=1)

    def extra_repr(self) -> str:
        gran = "per_tensor" if self.channel_axis is None else f"per_channel(axis={self.channel_axis})"
        return f"{gran}, max_samples={self.max_samples}"

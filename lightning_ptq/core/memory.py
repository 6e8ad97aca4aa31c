"""Peak memory of a block of work, for the job's results (``calib_peak_rss_mib``)."""
from __future__ import annotations

import threading
from pathlib import Path

import torch


def _rss_mib() -> float | None:
    statm = Path("/proc/self/statm")  # Linux; elsewhere no figure rather than a wrong one
    if not statm.is_file():
        return None
    return int(statm.read_text().split()[1]) * 4096 / 2**20


class PeakRSS:
    """Peak resident memory (MiB) of this process while the ``with`` block runs, sampled every
    20 ms (``peak``; ``None`` where /proc is missing), and CUDA's own peak where it is used
    (``gpu_peak``). A process that ran earlier work may start the block above zero: the figure is
    the process's, not the block's alone."""

    def __enter__(self) -> "PeakRSS":
        self.peak, self.gpu_peak, self._stop = _rss_mib(), None, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self) -> None:
        while self.peak is not None and not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.gpu_peak = torch.cuda.max_memory_allocated() / 2**20

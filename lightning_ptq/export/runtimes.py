"""Run an exported ONNX graph in onnxruntime or OpenVINO behind the PyTorch model's interface, and
measure it against the simulation.

:class:`RuntimeModel` is an ``nn.Module`` whose ``forward(images)`` runs the graph and returns the
same structure the PyTorch model returns (the dict of raw head outputs, the keypoint dict, the
logits); every other attribute (``postprocess``, anchors, strides, ``family``) is the PyTorch
model's. So the evaluation code of the jobs (:func:`~lightning_ptq.detection.evaluate_detections`,
``evaluate_keypoints``, ``evaluate_accuracy``) runs a runtime exactly as it runs the simulation:
same post-processing, same test split.

Runtime settings that matter for the numbers:

* onnxruntime: the CPU provider, all graph optimisations on (that is what fuses
  ``DQ -> Conv -> Q`` into an integer kernel; ``optimize=False`` keeps the graph as written, which
  computes the simulation to float rounding).
* OpenVINO: the CPU plugin with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 units its
  default runs float ops in bf16, which would add bf16 rounding on top of the quantization.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_unflatten

from .onnx import require

RUNTIMES = ("onnxruntime", "openvino")


class RuntimeModel(nn.Module):
    """The graph at ``path`` run by ``runtime`` (``onnxruntime`` | ``openvino``) on the CPU with
    ``threads`` threads (``None``: the runtime's default), shaped like ``template``'s outputs.

    ``template`` is the PyTorch model the graph was exported from (or any model with the same
    outputs and post-processing); it is kept for its attributes and never run by ``forward``.
    """

    def __init__(self, path: str | Path, template: nn.Module, example_input: torch.Tensor,
                 runtime: str = "onnxruntime", threads: int | None = None, optimize: bool = True) -> None:
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime={runtime!r} is unknown: choose one of {', '.join(RUNTIMES)}.")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads={threads!r} must be a positive integer or None.")
        self.runtime, self.path = runtime, str(path)
        self.template = template.eval()
        with torch.no_grad():
            _, self._spec = tree_flatten(template(example_input[:1]))
        self._run = _onnxruntime(self.path, threads, optimize) if runtime == "onnxruntime" else \
            _openvino(self.path, threads)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["template"], name)

    @torch.no_grad()
    def forward(self, images: torch.Tensor):
        outputs = self._run(np.ascontiguousarray(images.detach().cpu().float().numpy()))
        return tree_unflatten([torch.from_numpy(np.asarray(o)) for o in outputs], self._spec)

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, path={self.path!r}"


def _onnxruntime(path: str, threads: int | None, optimize: bool):
    require("onnxruntime")
    import onnxruntime as ort  # noqa: PLC0415 (optional dependency, checked above)

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def openvino_config(threads: int | None, float_precision: str | None = "f32") -> dict:
    """The OpenVINO CPU plugin settings every run here uses (float ops in f32; see the module
    docstring), with ``threads`` threads (``None``: the plugin's default). ``float_precision=None``
    leaves the float ops at the plugin's default precision (bf16 on CPUs with AMX or AVX512-BF16),
    which profiling uses to show what such a CPU gives a float graph."""
    config = {} if float_precision is None else {"INFERENCE_PRECISION_HINT": float_precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def _openvino(path: str, threads: int | None):
    require("openvino")
    import openvino as ov  # noqa: PLC0415 (optional dependency, checked above)

    compiled = ov.Core().compile_model(path, "CPU", openvino_config(threads))
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: images})
        return [result[out].copy() for out in compiled.outputs]
    return run


@torch.no_grad()
def output_differences(model: nn.Module, reference: nn.Module, batches) -> dict[str, dict[str, float]]:
    """Per output tensor (pytree path, e.g. ``['cls']``) the max and mean absolute difference of
    ``model`` against ``reference`` over ``batches`` (image batches or ``(images, targets)``)."""
    stats: dict[str, list[float]] = {}
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        got, _ = tree_flatten_with_path(model(images))
        want, _ = tree_flatten_with_path(reference.eval()(images))
        for (path, a), (_, b) in zip(got, want):
            diff = (a.float() - b.float()).abs()
            entry = stats.setdefault(keystr(path), [0.0, 0.0, 0])
            entry[0] = max(entry[0], float(diff.max()))
            entry[1] += float(diff.sum())
            entry[2] += diff.numel()
    return {name: {"max_abs": m, "mean_abs": s / max(n, 1)} for name, (m, s, n) in stats.items()}


@torch.no_grad()
def images_per_second(model: nn.Module, images: torch.Tensor, batch_size: int, min_seconds: float = 2.0,
                      warmup: int = 2) -> float:
    """Throughput of ``model`` on batches of ``batch_size`` images cut from ``images`` (repeated as
    needed): ``warmup`` untimed calls, then calls until ``min_seconds`` have passed (at least 5);
    ``batch_size`` over the median call time, so that a call slowed by other work on the cores
    does not move the figure."""
    reps = -(-batch_size // len(images))
    batch = images.repeat(reps, 1, 1, 1)[:batch_size].contiguous()
    for _ in range(warmup):
        model(batch)
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_seconds:
        begin = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - begin)
    return batch_size / statistics.median(times)

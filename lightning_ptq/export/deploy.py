"""The ``export`` step of the jobs: export the calibrated model, run it in each runtime (and in the
integer executor), and measure it against the simulation with the job's own evaluation.

Results (added to ``results.json`` and printed):

* ``onnx.*`` (onnxruntime) and ``openvino.*``: the task's metrics on the test split (``map``,
  ``map50``, ... for detectors; ``nme``, ... for keypoint models; ``acc`` for classifiers);
  ``max_abs_diff``, the largest absolute difference of any output element against the PyTorch
  simulation on the same calibration images, and ``mean_abs_diff``, the largest per-output mean; ``images_per_s`` at batch
  ``export.speed_batch`` and, from an FP32 export of the same network in the same runtime,
  ``fp32_images_per_s`` and ``speedup`` (their ratio).
* ``integer.*``: the same for the integer executor, plus ``min_layer_within_one_step`` (the
  lowest share, over its integer layers, of outputs within one grid step of the simulation's)
  and ``integer_layers`` / ``float_layers`` (how many layers ran in integers).

Files: ``model.onnx`` (the QDQ graph), ``model_fp32.onnx`` (its float baseline),
``model_qcdq.onnx`` for OpenVINO when there are 4-bit layers (4-bit codes in 8-bit types) and
``export_report.json`` (how each layer went into the graph, what the integer executor did).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..core.io import atomic_write_json
from .config import ExportConfig
from .integer import compare_layers, to_integer
from .onnx import to_onnx, to_onnx_float
from .runtimes import RuntimeModel, images_per_second, output_differences

log = logging.getLogger(__name__)

PREFIX = {"onnxruntime": "onnx", "openvino": "openvino"}


def _measured(prefix: str, model: nn.Module, qmodel: nn.Module, evaluate, compare: list, images: torch.Tensor,
              export: ExportConfig) -> dict:
    metrics = evaluate(model)
    diffs = output_differences(model, qmodel, compare)
    return {
        **{f"{prefix}.{k}": float(v) for k, v in metrics.items()},
        f"{prefix}.max_abs_diff": max(d["max_abs"] for d in diffs.values()),
        f"{prefix}.mean_abs_diff": max(d["mean_abs"] for d in diffs.values()),
        f"{prefix}.images_per_s": images_per_second(model, images, export.speed_batch, export.speed_seconds),
    }


def deploy(export: ExportConfig | None, fp_model: nn.Module, qmodel: nn.Module, calib_images: list[torch.Tensor],
           run_dir: Path, evaluate: Callable[[nn.Module], dict]) -> dict:
    """Export and measure ``qmodel`` as ``export`` says (nothing for ``export=none``); returns the
    numbers to add to the run's results (see the module docstring). ``calib_images``: image
    batches of the calibration split (the example input, the speed runs, the output comparison
    and the integer executor's output ranges); ``evaluate(model)``: the job's test metrics."""
    if export is None or not export.formats:
        return {}
    run_dir = Path(run_dir)
    qmodel, fp_model = qmodel.eval(), fp_model.eval()
    example, compare = calib_images[0], calib_images[:export.compare_batches]
    images = torch.cat(calib_images)[:export.speed_batch]
    results, report = {}, {}
    if "onnx" in export.formats:
        log.info("export: writing model.onnx (QDQ, opset %d) and its FP32 baseline", export.opset)
        onnx_report = to_onnx(qmodel, example, run_dir / "model.onnx", opset=export.opset)
        fp_path = to_onnx_float(fp_model, example, run_dir / "model_fp32.onnx", opset=export.opset)
        report["onnx"] = onnx_report.to_dict()
        for runtime in export.runtimes:
            prefix, path = PREFIX[runtime], onnx_report.path
            if runtime == "openvino" and any(layer.w_bits == 4 or layer.a_bits == 4 for layer in onnx_report.layers):
                # OpenVINO 2026.4 crashes compiling a uint4 QuantizeLinear after a Concat: it gets
                # the same graph with 4-bit codes in 8-bit types and a Clip.
                path = to_onnx(qmodel, example, run_dir / "model_qcdq.onnx", opset=export.opset, int4_types=False).path
            log.info("export: evaluating %s in %s", Path(path).name, runtime)
            model = RuntimeModel(path, qmodel, example, runtime, export.threads)
            results |= _measured(prefix, model, qmodel, evaluate, compare, images, export)
            fp32 = RuntimeModel(fp_path, fp_model, example, runtime, export.threads)
            results[f"{prefix}.fp32_images_per_s"] = images_per_second(fp32, images, export.speed_batch,
                                                                       export.speed_seconds)
            results[f"{prefix}.speedup"] = results[f"{prefix}.images_per_s"] / results[f"{prefix}.fp32_images_per_s"]
    if "integer" in export.formats:
        log.info("export: building the integer executor and evaluating it")
        model = to_integer(qmodel, calib_images)
        results |= _measured("integer", model, qmodel, evaluate, compare, images, export)
        shares = compare_layers(model, qmodel, compare)
        results["integer.min_layer_within_one_step"] = min(shares.values()) if shares else float("nan")
        results["integer.integer_layers"] = sum(1 for r in model.report if r["kind"].startswith("integer"))
        results["integer.float_layers"] = sum(1 for r in model.report if not r["kind"].startswith("integer"))
        report["integer"] = {"layers": model.report, "within_one_step": shares}
    atomic_write_json({"settings": asdict(export), **report},
                      run_dir / "export_report.json")
    return results

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
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..core.errors import ConfigError
from ..core.io import atomic_write_json
from .errors import INT4_OPSET
from .integer import compare_layers, to_integer
from .onnx import MIN_OPSET, require, to_onnx, to_onnx_float
from .runtimes import RUNTIMES, RuntimeModel, images_per_second, output_differences

log = logging.getLogger(__name__)

FORMATS = ("onnx", "integer")
PREFIX = {"onnxruntime": "onnx", "openvino": "openvino"}
KEYS = ("formats", "runtimes", "opset", "threads", "speed_batch", "speed_seconds", "compare_batches")


def check_export_config(export: DictConfig | None) -> None:
    """Fail at start-up, with the fix, on export settings that cannot work (or a runtime that is
    not installed)."""
    if not export or not export.formats:
        return
    unknown = sorted(set(export) - set(KEYS))
    if unknown:
        raise ConfigError(f"export has unknown keys {unknown}: allowed are {list(KEYS)}.")
    bad = [f for f in export.formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"export.formats has {bad}: choose among {', '.join(FORMATS)} (or export=none).")
    if "onnx" in export.formats:
        bad = [r for r in export.runtimes if r not in RUNTIMES]
        if bad or not export.runtimes:
            raise ConfigError(f"export.runtimes={list(export.runtimes)} must list one or more of {', '.join(RUNTIMES)}.")
        if not isinstance(export.opset, int) or export.opset < MIN_OPSET:
            raise ConfigError(f"export.opset={export.opset!r} must be an integer >= {MIN_OPSET} "
                              f"({INT4_OPSET} for 4-bit layers).")
        require("onnx", "onnxscript", *export.runtimes)
    for key in ("speed_batch", "compare_batches"):
        if not isinstance(export[key], int) or export[key] < 1:
            raise ConfigError(f"export.{key}={export[key]!r} must be a positive integer.")
    if export.threads is not None and (not isinstance(export.threads, int) or export.threads < 1):
        raise ConfigError(f"export.threads={export.threads!r} must be a positive integer or null.")
    if not export.speed_seconds > 0:
        raise ConfigError(f"export.speed_seconds={export.speed_seconds!r} must be > 0.")


def _measured(prefix: str, model: nn.Module, qmodel: nn.Module, evaluate, compare: list, images: torch.Tensor,
              export: DictConfig) -> dict:
    metrics = evaluate(model)
    diffs = output_differences(model, qmodel, compare)
    return {
        **{f"{prefix}.{k}": float(v) for k, v in metrics.items()},
        f"{prefix}.max_abs_diff": max(d["max_abs"] for d in diffs.values()),
        f"{prefix}.mean_abs_diff": max(d["mean_abs"] for d in diffs.values()),
        f"{prefix}.images_per_s": images_per_second(model, images, export.speed_batch, export.speed_seconds),
    }


def deploy(export: DictConfig | None, fp_model: nn.Module, qmodel: nn.Module, calib_images: list[torch.Tensor],
           run_dir: Path, evaluate: Callable[[nn.Module], dict]) -> dict:
    """Export and measure ``qmodel`` as ``export`` says (nothing for ``export=none``); returns the
    numbers to add to the run's results (see the module docstring). ``calib_images``: image
    batches of the calibration split (the example input, the speed runs, the output comparison
    and the integer executor's output ranges); ``evaluate(model)``: the job's test metrics."""
    if not export or not export.formats:
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
    atomic_write_json({"settings": OmegaConf.to_container(export, resolve=True), **report},
                      run_dir / "export_report.json")
    return results

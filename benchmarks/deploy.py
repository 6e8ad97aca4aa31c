"""The quantized default detector deployed: PyTorch FP32, onnxruntime and OpenVINO (FP32 and our
QDQ exports at W8A8, W4A8, W4A4), onnxruntime's own INT8 quantizer as a reference, and the integer
executor; side by side in one process, on the same FP model, calibration images and test split.

    python benchmarks/deploy.py                                   # calibrates W8A8 (+ LAQ head), W4A8, W4A4
    python benchmarks/deploy.py --state W8A8=<run>/quantized_state_dict.pt --state W4A4=...

Per model: mAP@[.5:.95] on the test split, the difference from the PyTorch simulation of the same
model, the largest output difference, the file size and images/s at batch 1 and 32 with 1 and 2
threads; speed is quoted as a ratio to the same runtime's FP32 export, timed in alternation with it
(best of two timings each: the machine's speed drifts by tens of percent over minutes). The
``QCDQ`` rows carry 4-bit codes in 8-bit types (``to_onnx(..., int4_types=False)``): OpenVINO
2026.4 crashes on uint4 activations after a Concat, and onnxruntime has int8 but no int4 kernels.
``onnxruntime quantize_static`` is onnxruntime's INT8 QDQ quantizer (min/max calibration, per
channel weights) and ``OpenVINO NNCF INT8`` OpenVINO's own (``nncf.quantize``, mixed preset:
asymmetric activations as ours, its default bias correction), each on the same FP32 export and
calibration images: the two runtimes' own answers to "INT8 this model". Prints markdown, writes
JSON.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from lightning_ptq.detection import eval_kwargs, load_data_and_model
from lightning_ptq.export import to_onnx
from lightning_ptq.export.integer import to_integer
from lightning_ptq.export.onnx import to_onnx_float
from lightning_ptq.export.runtimes import RUNTIMES, RuntimeModel, images_per_second, output_differences
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write, atomic_write_json
from lightning_ptq.detection import evaluate_detections
from lightning_ptq.pipeline import calibration_batches, load_quantized_state, quantize_and_calibrate
from lightning_ptq.quant import QuantConfig, quantize
from lightning_ptq.quant.swap import quantized_layers

# name -> (recipe, overrides). W8A8_laq_head is yolo_w8a8 with the 4-bit recipes' log-affine head
# weights, which no runtime has an integer kernel for: it shows what they cost in speed.
RECIPES = {"W8A8": ("yolo_w8a8", []), "W8A8_laq_head": ("yolo_w8a8", ["quant.laq_patterns=[head.*]", "quant.laq_on=weights"]),
           "W4A8": ("yolo_w4a8", []), "W4A4": ("yolo_w4a4", [])}
SPEEDS = [(1, 1), (1, 2), (32, 1), (32, 2)]  # (batch, threads)
ROUNDS = 2  # each speed is the best of this many timings, alternated with the FP32 baseline's


def quantized(bits: str, fp_model, batches, state: str | None, overrides: list[str]):
    recipe, variant = RECIPES[bits]
    cfg = compose_config([f"+recipe={recipe}", "logger=none", *variant, *overrides])
    qcfg = QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))
    if state:
        qmodel = quantize(fp_model, qcfg, example_input=batches[0][0])
        load_quantized_state(qmodel, state)
    else:
        qmodel, _, _ = quantize_and_calibrate(fp_model, qcfg, batches, cfg.calib, cfg.trainer)
    return qmodel.eval()


def qmodel_bits(qmodel) -> int:
    """The narrowest weight or activation width of ``qmodel``'s quantized layers."""
    return min(q.bits for layer in quantized_layers(qmodel).values() for q in layer.quantizers)


class Images:
    """Calibration images as onnxruntime's CalibrationDataReader wants them."""

    def __init__(self, batches):
        self.batches = iter([{"images": b[0].numpy()} for b in batches])

    def get_next(self):
        return next(self.batches, None)


def ort_int8(fp_path: Path, batches, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(Images, CalibrationDataReader):
        pass

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp_path), str(pre), skip_symbolic_shape=True)  # its symbolic pass fails on this graph
    quantize_static(str(pre), str(out), Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink()
    return out


def nncf_int8(fp_path: Path, batches, out: Path) -> Path:
    """OpenVINO's post-training INT8 quantizer on the FP32 export: it places the quantizers where
    OpenVINO's CPU plugin runs them fastest, so its speed is the runtime's reference for W8A8."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp_path))
    data = nncf.Dataset([b[0].numpy() for b in batches])
    quantized_model = nncf.quantize(model, data, preset=nncf.QuantizationPreset.MIXED, subset_size=len(batches))
    ov.save_model(quantized_model, str(out))  # writes out (.xml) and its .bin
    return out


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that decide which int8 kernels a runtime
    has (VNNI: one instruction per int8 dot product; AVX2 alone: three)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = [f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "amx_int8") if f in flags]
    return f"{name}, {os.cpu_count()} cores ({', '.join(isa) or 'no AVX2'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/deploy.json")
    parser.add_argument("--state", action="append", default=[],
                        help="NAME=path of a calibrated quantized_state_dict.pt (NAME one of --bits)")
    parser.add_argument("--bits", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--no-integer", action="store_true", help="skip the integer executor")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the main job's config")
    args = parser.parse_args()
    states = dict(s.split("=", 1) for s in args.state)
    cfg = compose_config(["+recipe=yolo_w8a8", "logger=none", *args.overrides])
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, fp_model = load_data_and_model(cfg)
    test = datamodule.test_dataloader()
    batches = calibration_batches(datamodule, cfg.calib.num_images)
    example = batches[0][0]
    images = torch.cat([b[0] for b in batches])[:32]
    compare = [b[0] for b in batches[:2]]

    def evaluate(model) -> float:
        return evaluate_detections(model, test, progress=False, **eval_kwargs(cfg))["map"]

    def at_threads(model, threads: int):
        if isinstance(model, RuntimeModel):
            return RuntimeModel(model.path, model.template, example, model.runtime, threads)
        torch.set_num_threads(threads)
        return model

    def timed(model, baseline) -> tuple[dict, dict]:
        """images/s of ``model`` and of its runtime's FP32 ``baseline``, timed in alternation
        (best of ROUNDS each), so that a ratio compares the two on the same machine state."""
        speed, base = {}, {}
        for batch, threads in SPEEDS:
            key, ours, theirs = f"b{batch}_t{threads}", [], []
            for _ in range(ROUNDS):
                if baseline is not None:
                    theirs.append(images_per_second(at_threads(baseline, threads), images, batch, min_seconds=1.0))
                ours.append(images_per_second(at_threads(model, threads), images, batch, min_seconds=1.0))
            speed[key] = max(ours)
            base[key] = max(theirs) if theirs else speed[key]
        torch.set_num_threads(os.cpu_count() or 1)
        return speed, base

    work = Path(tempfile.mkdtemp(prefix="deploy_bench_"))
    rows = []

    baselines = {}

    def add(name, runtime, model, reference, path=None, sim_map=None):
        baseline = None if name == "FP32" else baselines.get(runtime, fp_model)  # PyTorch for sim / integer
        speed, fp32_speed = timed(model, baseline)
        row = {"model": name, "runtime": runtime, "map": evaluate(model), "speed": speed, "fp32_speed": fp32_speed,
               "speedup": {k: v / fp32_speed[k] for k, v in speed.items()},
               "size_kib": Path(path).stat().st_size / 1024 if path else None}
        if reference is not None:
            row["sim_map"] = sim_map
            row["delta_map"] = row["map"] - sim_map
            row["max_abs_diff"] = max(d["max_abs"] for d in output_differences(model, reference, compare).values())
        rows.append(row)
        print(f"{name:28s} {runtime:12s} mAP {row['map']:.4f}  b32/t2 {row['speed']['b32_t2']:.0f} img/s", flush=True)

    add("FP32", "pytorch", fp_model, None)
    fp_path = to_onnx_float(fp_model, example, work / "fp32.onnx")
    for runtime in RUNTIMES:
        baselines[runtime] = RuntimeModel(fp_path, fp_model, example, runtime)
        add("FP32", runtime, baselines[runtime], None, fp_path)
    int8_path = ort_int8(fp_path, batches, work / "ort_int8.onnx")
    for runtime in ("onnxruntime", "openvino"):
        add("onnxruntime quantize_static INT8", runtime, RuntimeModel(int8_path, fp_model, example, runtime), fp_model,
            int8_path, rows[0]["map"])
    nncf_path = nncf_int8(fp_path, batches, work / "nncf_int8.xml")
    add("OpenVINO NNCF INT8", "openvino", RuntimeModel(nncf_path, fp_model, example, "openvino"), fp_model,
        nncf_path.with_suffix(".bin"), rows[0]["map"])
    for bits in args.bits:
        qmodel = quantized(bits, fp_model, batches, states.get(bits), args.overrides)
        sim = evaluate(qmodel)
        add(f"ours {bits}", "pytorch (simulation)", qmodel, qmodel, None, sim)
        qdq = to_onnx(qmodel, example, work / f"{bits}.onnx").path
        if qmodel_bits(qmodel) == 8:
            add(f"ours {bits} QDQ", "onnxruntime", RuntimeModel(qdq, qmodel, example, "onnxruntime"), qmodel, qdq, sim)
            add(f"ours {bits} QDQ", "openvino", RuntimeModel(qdq, qmodel, example, "openvino"), qmodel, qdq, sim)
        else:
            add(f"ours {bits} QDQ (int4)", "onnxruntime", RuntimeModel(qdq, qmodel, example, "onnxruntime"), qmodel,
                qdq, sim)
            qcdq = to_onnx(qmodel, example, work / f"{bits}_qcdq.onnx", int4_types=False).path
            for runtime in ("onnxruntime", "openvino"):
                add(f"ours {bits} QCDQ", runtime, RuntimeModel(qcdq, qmodel, example, runtime), qmodel, qcdq, sim)
        if not args.no_integer:
            add(f"ours {bits}", "integer executor", to_integer(qmodel, [b[0] for b in batches]), qmodel, None, sim)

    result = {"settings": {"image_size": cfg.data.image_size, "calib_images": sum(len(b[0]) for b in batches), "cpu_threads": os.cpu_count(),
                           "cpu": cpu_description(),
                           "states": states}, "rows": rows}
    atomic_write_json(result, args.out)
    md = f"CPU: {result['settings']['cpu']}\n\n" + markdown(rows)
    atomic_write(Path(args.out).with_suffix(".md"), lambda tmp: Path(tmp).write_text(md))
    print(md)
    print(f"exported graphs kept in {work} (to profile them)")


def _cell(row: dict, key: str, fmt: str) -> str:
    return "" if row.get(key) is None else format(row[key], fmt)


def markdown(rows: list[dict]) -> str:
    head = ("| model | runtime | mAP | Δ vs sim | max abs diff | size KiB | "
            + " | ".join(f"img/s b{b} t{t} (× FP32)" for b, t in SPEEDS) + " |")
    lines = [head, "|" + "---|" * (6 + len(SPEEDS))]
    for r in rows:
        speed = " | ".join(f"{r['speed'][f'b{b}_t{t}']:.0f} ({r['speedup'][f'b{b}_t{t}']:.2f}×)" for b, t in SPEEDS)
        lines.append(f"| {r['model']} | {r['runtime']} | {r['map']:.4f} | {_cell(r, 'delta_map', '+.4f')} | "
                     f"{_cell(r, 'max_abs_diff', '.3g')} | {_cell(r, 'size_kib', '.0f')} | {speed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

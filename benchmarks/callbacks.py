"""The callbacks against the job and the Python API, side by side in one process, on the same FP
models, calibration images, settings and seeds:

    python benchmarks/callbacks.py                    # both parts, seeds 0 1 2 (about 75 min on 2 CPU cores)
    python benchmarks/callbacks.py --parts yolo --seeds 0

* ``yolo``: the default YOLO at W4A4, the Hydra job (``+recipe=yolo_w4a4``) against
  ``RegPTQCallback()`` (whose defaults are that recipe's) in a LightningModule holding the same
  FP detector; both take the calib split's first 256 images and are evaluated by the same code.
* ``fcos``: the stock torchvision FCOS of ``examples/torchvision_lightning.py`` (trained by
  the example on the default data and cached), W4A4: ranges only (``QuantizationCallback``,
  ``steps=0``), the regression-aware method through ``RegPTQCallback`` and through the Python API
  (``quantize`` + ``calibrate`` with the filtered global loss) with the same settings, each tested
  by the example's own test loop (torchmetrics mAP).

Prints a markdown table (mean ± sample std over seeds) and writes JSON. Each finished part and seed
is kept as ``benchmarks/runs/callbacks/rows/<part>_<seed>.json``, so that a run that was stopped goes
on where it stopped; ``--fresh`` measures every row again.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize
from lightning_ptq.calib import FilteredGlobalLoss
from lightning_ptq.callbacks import QuantizationCallback, RegPTQCallback
from lightning_ptq.core.io import atomic_write, atomic_write_json
from lightning_ptq.detection import detector_of, eval_kwargs, evaluate_detections, load_data_and_model
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.job import run_job

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs" / "callbacks"
FCOS_STEPS = 200


class HoldsDetector(L.LightningModule):
    """A user's module around the project's detector; the test loop only has to run."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def test_step(self, batch, batch_idx):
        self.detector(batch[0])


def _trainer(callbacks=(), root: Path = RUNS) -> L.Trainer:
    return L.Trainer(callbacks=list(callbacks), default_root_dir=root, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")


def yolo(seed: int, fresh: bool) -> dict:
    overrides = ["+recipe=yolo_w4a4", "logger=none", f"seed={seed}", "trainer.enable_progress_bar=false"]
    cfg = compose_config(overrides)
    job_results = RUNS / f"yolo_job_{seed}" / "results.json"
    # the job's own results.json, when an earlier run of this benchmark finished the job and not the row
    job = json.loads(job_results.read_text()) if job_results.is_file() and not fresh else run_job(cfg, job_results.parent)

    datamodule, fp = load_data_and_model(cfg)
    L.seed_everything(seed, verbose=False)
    module = HoldsDetector(copy.deepcopy(fp))
    start = time.perf_counter()
    _trainer([RegPTQCallback(calib_dataloader=datamodule.calib_dataloader())]).test(
        module, datamodule.test_dataloader(), verbose=False)
    callback_seconds = time.perf_counter() - start
    callback = evaluate_detections(module.detector, datamodule.test_dataloader(), progress=False, **eval_kwargs(cfg))
    return {"fp": job["fp.map"], "job": job["quant.map"], "callback": callback["map"],
            "job_seconds": job["calib_seconds"], "callback_seconds": callback_seconds}


def _example():
    path = ROOT / "examples" / "torchvision_lightning.py"
    spec = importlib.util.spec_from_file_location("torchvision_lightning", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Lightning's checkpoint loading looks the class up by module name
    spec.loader.exec_module(module)
    return module


def fcos(seed: int, example, data: Path) -> dict:
    args = argparse.Namespace(data=str(data), out=str(RUNS / "fcos"), arch="fcos", epochs=8, image_size=128,
                              train_images=None, test_images=None)  # the example's defaults
    Path(args.out).mkdir(parents=True, exist_ok=True)
    checkpoint = example.trained(args)
    calib_loader = example.loader(args.data, "calib", 16)
    settings = {"w_bits": 4, "a_bits": 4}, {"steps": FCOS_STEPS, "weight_lr": 0.0}
    row = {"fp": example.test_map(checkpoint, args)}
    L.seed_everything(seed, verbose=False)
    row["ranges"] = example.test_map(checkpoint, args, [QuantizationCallback(
        settings[0], {"steps": 0}, calib_dataloader=calib_loader, submodule="model")])
    L.seed_everything(seed, verbose=False)
    callback = RegPTQCallback(*settings, calib_dataloader=calib_loader, submodule="model")
    start = time.perf_counter()
    row["callback"] = example.test_map(checkpoint, args, [callback])
    row["callback_seconds"] = time.perf_counter() - start

    # the Python API with the same settings: quantize the view in place, calibrate, then the user's test loop
    L.seed_everything(seed, verbose=False)
    module = example.Detector.load_from_checkpoint(checkpoint)
    teacher = copy.deepcopy(detector_of(module.model)).eval()
    batches = list(calib_loader)  # the calib split: 256 images, as the callback takes
    student = quantize(detector_of(module.model), QuantConfig(**settings[0], laq_patterns=("@head",)), inplace=True,
                       example_input=list(batches[0][0]))
    start = time.perf_counter()
    calibrate(teacher, student, batches, CalibConfig(**settings[1]), loss=FilteredGlobalLoss(student.adapter()),
              trainer_kwargs={"enable_progress_bar": False})
    row["api_seconds"] = time.perf_counter() - start
    trainer = L.Trainer(default_root_dir=args.out, logger=False, enable_progress_bar=False)
    row["api"] = trainer.test(module, example.loader(args.data, "test", 16), verbose=False)[0]["test/map"]
    return row


def _row(part: str, seed: int, measure, fresh: bool) -> dict:
    """``measure(seed)``, or the row a previous run of this benchmark finished for this part and seed."""
    path = RUNS / "rows" / f"{part}_{seed}.json"
    if path.is_file() and not fresh:
        print(f"{part} seed {seed}: the row finished earlier, {path}")
        return json.loads(path.read_text())
    row = measure(seed)
    atomic_write_json(row, path)
    return row


def _summary(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: (statistics.mean(r[k] for r in rows), statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0)
            for k in keys}


def markdown(results: dict) -> str:
    # calibration s: the job's calib_seconds; for a callback, the whole trainer.test call it ran in
    lines = ["| model | path | mAP@[.5:.95] | retention | calibration s | seeds |", "|---|---|---|---|---|---|"]
    labels = {"yolo": ("default YOLO W4A4", {"job": "Hydra job (+recipe=yolo_w4a4)", "callback": "RegPTQCallback()"}),
              "fcos": ("stock torchvision FCOS W4A4", {"ranges": "ranges only (QuantizationCallback, steps=0)",
                                                       "callback": "LAQ + FGL, RegPTQCallback",
                                                       "api": "LAQ + FGL, Python API"})}
    for part, summary in results["summary"].items():
        model, paths = labels[part]
        fp = summary["fp"][0]
        lines.append(f"| {model} | FP32 | {fp:.4f} | | | {len(results['rows'][part])} |")
        for key, label in paths.items():
            mean, std = summary[key]
            seconds = summary.get(f"{key}_seconds", (None,))[0]
            lines.append(f"| {model} | {label} | {mean:.4f} ± {std:.4f} | {mean / fp:.1%} | "
                         f"{'' if seconds is None else f'{seconds:.0f}'} | {len(results['rows'][part])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["yolo", "fcos"], choices=["yolo", "fcos"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/callbacks.json")
    parser.add_argument("--fresh", action="store_true", help="measure every row again, ignoring finished ones")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, list[dict]] = {}
    if "yolo" in args.parts:
        rows["yolo"] = [_row("yolo", seed, lambda s: yolo(s, args.fresh), args.fresh) for seed in args.seeds]
    if "fcos" in args.parts:
        cfg = compose_config(["logger=none"])
        load_data_and_model(cfg)  # generates the default data when it is not there yet
        example, data = _example(), Path(cfg.data.default_root)
        rows["fcos"] = [_row("fcos", seed, lambda s: fcos(s, example, data), args.fresh) for seed in args.seeds]
    results = {"command": "python benchmarks/callbacks.py " + " ".join(sys.argv[1:]), "threads": 1, "rows": rows,
               "summary": {part: _summary(r) for part, r in rows.items()}}
    atomic_write_json(results, args.out)
    md = f"`{results['command'].strip()}`\n\n" + markdown(results)
    atomic_write(Path(args.out).with_suffix(".md"), lambda tmp: Path(tmp).write_text(md))
    print(md)


if __name__ == "__main__":
    main()

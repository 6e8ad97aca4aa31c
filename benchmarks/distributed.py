"""Calibration on one process against two (``trainer.strategy=ddp trainer.devices=2``, gloo on
CPU, one thread per process), the default YOLO at W4A4 (``+recipe=yolo_w4a4``), side by side
on the same FP model, calibration images, settings and seeds:

    python benchmarks/distributed.py                  # seeds 0 1 2 (about 40 min on 2 CPU cores)
    python benchmarks/distributed.py --seeds 0

Each run is the command a user types, in its own folder under ``benchmarks/runs/distributed``;
a finished run (its ``results.json``) is kept, so that a stopped benchmark goes on where it
stopped (``--fresh`` runs all again). Prints a markdown table and writes JSON: mAP (mean ±
sample std over seeds), the largest difference between the two processes' calibrated states,
and the calibration wall time as a ratio, two processes / one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from lightning_ptq.core.io import atomic_write, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs" / "distributed"
COMMON = ["+recipe=yolo_w4a4", "logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
          "num_threads=1"]
PROCESSES = {1: [], 2: ["trainer.strategy=ddp", "trainer.devices=2"]}


def run(processes: int, seed: int, fresh: bool) -> dict:
    run_dir = RUNS / f"{processes}proc_seed{seed}"
    results = run_dir / "results.json"
    if results.is_file() and not fresh:
        print(f"{processes} process(es), seed {seed}: finished earlier, {results}")
        return json.loads(results.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "lightning_ptq", *COMMON, *PROCESSES[processes], f"seed={seed}",
               f"hydra.run.dir={run_dir}"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(results.read_text())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    parser.add_argument("--fresh", action="store_true", help="run every job again, ignoring finished ones")
    args = parser.parse_args()
    rows = {n: [run(n, seed, args.fresh) for seed in args.seeds] for n in PROCESSES}
    fp = rows[1][0]["fp.map"]
    summary = {n: {"map": _mean_std([r["quant.map"] for r in runs]),
                   "calib_seconds": _mean_std([r["calib_seconds"] for r in runs]),
                   "rank_difference": max(r.get("calib.rank_difference", 0.0) for r in runs)}
               for n, runs in rows.items()}
    ratio = summary[2]["calib_seconds"][0] / summary[1]["calib_seconds"][0]
    command = "python benchmarks/distributed.py " + " ".join(sys.argv[1:])
    atomic_write_json({"command": command.strip(), "fp_map": fp, "seeds": args.seeds,
                       "rows": {str(n): r for n, r in rows.items()},
                       "summary": {str(n): s for n, s in summary.items()}, "calib_seconds_ratio_2_over_1": ratio},
                      args.out)
    lines = [f"`{command.strip()}`", "",
             "| processes | mAP@[.5:.95] | retention | largest rank difference | calibration s | seeds |",
             "|---|---|---|---|---|---|", f"| FP32 | {fp:.4f} | | | | |"]
    for n, s in summary.items():
        (mean, std), (sec, sec_std) = s["map"], s["calib_seconds"]
        lines.append(f"| {n} | {mean:.4f} ± {std:.4f} | {mean / fp:.1%} | {s['rank_difference']:g} | "
                     f"{sec:.0f} ± {sec_std:.0f} | {len(args.seeds)} |")
    lines += ["", f"calibration wall time, 2 processes / 1: {ratio:.2f}"]
    md = "\n".join(lines) + "\n"
    atomic_write(Path(args.out).with_suffix(".md"), lambda tmp: Path(tmp).write_text(md))
    print(md)


if __name__ == "__main__":
    main()

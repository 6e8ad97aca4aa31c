"""Calibration on one process against two (``trainer.strategy=ddp trainer.devices=2``, gloo on
CPU, one thread per process), the default YOLO at W4A4 (``+recipe=yolo_w4a4``), side by side
on the same FP model, calibration images, settings and seeds:

    python benchmarks/distributed.py                  # seeds 0 1 2 (about 40 min on 2 CPU cores)
    python benchmarks/distributed.py --seeds 0
    python benchmarks/distributed.py --search --seeds 0   # the per-layer search instead

Each run is the command a user types, in its own folder under ``benchmarks/runs/distributed``;
a finished run (its ``results.json``) is kept, so that a stopped benchmark goes on where it
stopped (``--fresh`` runs all again). Prints a markdown table and writes JSON: mAP (mean ±
sample std over seeds), the largest difference between the two processes' calibrated states,
and the calibration wall time as a ratio, two processes / one.

With ``--search`` it measures the accuracy-driven per-layer search (``yolo_w4a4_search``), whose
candidate evaluations the processes share. Both searches start from one calibrated state (a
``yolo_w4a4`` run with ``calib.weight_lr=0`` on one process, loaded by ``calib.quantized_state``),
so that they take the same path: the table says whether every layer's choice matched and gives
the search's wall time as a ratio, two processes / one.
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
COMMON = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
          "num_threads=1"]
PROCESSES = {1: [], 2: ["trainer.strategy=ddp", "trainer.devices=2"]}


def _run_folder(name: str, processes: int, seed: int) -> Path:
    return RUNS / name / f"{processes}proc_seed{seed}"


def run(processes: int, seed: int, fresh: bool, name: str = "",
        overrides: tuple[str, ...] = ("+recipe=yolo_w4a4",)) -> dict:
    run_dir = _run_folder(name, processes, seed)
    results = run_dir / "results.json"
    if results.is_file() and not fresh:
        print(f"{processes} process(es), seed {seed}: finished earlier, {results}")
        return json.loads(results.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "lightning_ptq", *overrides, *COMMON, *PROCESSES[processes], f"seed={seed}",
               f"hydra.run.dir={run_dir}"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(results.read_text())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _command() -> str:
    return "python benchmarks/distributed.py " + " ".join(sys.argv[1:]).strip()


def _write(result: dict, lines: list[str], out: str) -> None:
    """``result`` as JSON at ``out``, ``lines`` as markdown beside it, and printed."""
    atomic_write_json(result, out)
    md = "\n".join(lines) + "\n"
    atomic_write(Path(out).with_suffix(".md"), lambda tmp: Path(tmp).write_text(md))
    print(md)


def search_choices(processes: int, seed: int) -> list[tuple]:
    layers = json.loads((_run_folder("search", processes, seed) / "search.json").read_text())["layers"]
    return [(r["name"], r["chosen"], r["w_bits"], r["a_bits"], r["tries"]) for r in layers]


def search_main(seeds: list[int], fresh: bool, out: str) -> None:
    rows = {}
    for seed in seeds:
        run(1, seed, fresh, "search_start", ("+recipe=yolo_w4a4", "calib.weight_lr=0"))
        state = _run_folder("search_start", 1, seed) / "quantized_state_dict.pt"
        for n in PROCESSES:
            rows.setdefault(n, []).append(
                run(n, seed, fresh, "search", ("+recipe=yolo_w4a4_search", f"calib.quantized_state={state}")))
    same = [search_choices(1, seed) == search_choices(2, seed) for seed in seeds]
    summary = {n: {"map": _mean_std([r["quant.map"] for r in runs]),
                   "search_minutes": _mean_std([r["search.minutes"] for r in runs]),
                   "evaluations": _mean_std([r["search.evaluations"] for r in runs])} for n, runs in rows.items()}
    ratio = summary[2]["search_minutes"][0] / summary[1]["search_minutes"][0]
    result = {"command": _command(), "seeds": seeds, "same_choices": same, "rows": {str(n): r for n, r in rows.items()},
              "summary": {str(n): s for n, s in summary.items()}, "search_minutes_ratio_2_over_1": ratio}
    lines = [f"`{_command()}`", "",
             "| processes | test mAP after the search | evaluations | search min | seeds |", "|---|---|---|---|---|"]
    for n, s in summary.items():
        (mean, std), (minutes, minutes_std) = s["map"], s["search_minutes"]
        lines.append(f"| {n} | {mean:.4f} ± {std:.4f} | {s['evaluations'][0]:.0f} | "
                     f"{minutes:.1f} ± {minutes_std:.1f} | {len(seeds)} |")
    lines += ["", f"every layer's choice, bits and tries the same on 1 and 2 processes: {all(same)} (per seed: {same})",
              f"search wall time, 2 processes / 1: {ratio:.2f}"]
    _write(result, lines, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--search", action="store_true", help="measure the per-layer search instead of calibration")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/distributed[_search].json")
    parser.add_argument("--fresh", action="store_true", help="run every job again, ignoring finished ones")
    args = parser.parse_args()
    if args.search:
        return search_main(args.seeds, args.fresh, args.out or "benchmarks/results/distributed_search.json")
    args.out = args.out or "benchmarks/results/distributed.json"
    rows = {n: [run(n, seed, args.fresh) for seed in args.seeds] for n in PROCESSES}
    fp = rows[1][0]["fp.map"]
    summary = {n: {"map": _mean_std([r["quant.map"] for r in runs]),
                   "calib_seconds": _mean_std([r["calib_seconds"] for r in runs]),
                   "rank_difference": max(r.get("calib.rank_difference", 0.0) for r in runs)}
               for n, runs in rows.items()}
    ratio = summary[2]["calib_seconds"][0] / summary[1]["calib_seconds"][0]
    result = {"command": _command(), "fp_map": fp, "seeds": args.seeds, "rows": {str(n): r for n, r in rows.items()},
              "summary": {str(n): s for n, s in summary.items()}, "calib_seconds_ratio_2_over_1": ratio}
    lines = [f"`{_command()}`", "",
             "| processes | mAP@[.5:.95] | retention | largest rank difference | calibration s | seeds |",
             "|---|---|---|---|---|---|", f"| FP32 | {fp:.4f} | | | | |"]
    for n, s in summary.items():
        (mean, std), (sec, sec_std) = s["map"], s["calib_seconds"]
        lines.append(f"| {n} | {mean:.4f} ± {std:.4f} | {mean / fp:.1%} | {s['rank_difference']:g} | "
                     f"{sec:.0f} ± {sec_std:.0f} | {len(args.seeds)} |")
    lines += ["", f"calibration wall time, 2 processes / 1: {ratio:.2f}"]
    _write(result, lines, args.out)


if __name__ == "__main__":
    main()

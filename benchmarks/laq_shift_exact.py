"""What the shift-exact log-affine quantizer costs: ``yolo_w4a4`` with learnable ``k`` against
``quant.laq_shift_exact=true`` (``k = 1/n``, every head weight level a power of two times a
per-channel scale), over seeds, on the same cached FP detector.

    python benchmarks/laq_shift_exact.py                       # seeds 0 1 2, run folders under --runs
    python benchmarks/laq_shift_exact.py --seeds 0 1 2 3 --runs /tmp/laq

Each (seed, setting) is one main job (``python -m lightning_ptq +recipe=yolo_w4a4 seed=S
quant.laq_shift_exact=...``) in ``<runs>/s<S>_<setting>``; a folder that already holds a
``results.json`` is reused, so an interrupted benchmark resumes. Prints markdown, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lightning_ptq.job import run_job
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write, atomic_write_json
from lightning_ptq.report import mean_and_spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="outputs/laq_shift_exact")
    parser.add_argument("--out", default="benchmarks/results/laq_shift_exact.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the main job's config")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        for shift_exact in (False, True):
            run_dir = Path(args.runs) / f"s{seed}_{str(shift_exact).lower()}"
            done = run_dir / "results.json"
            if done.is_file():
                results = json.loads(done.read_text())
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                cfg = compose_config(["+recipe=yolo_w4a4", "logger=none", f"seed={seed}",
                                      f"quant.laq_shift_exact={str(shift_exact).lower()}", *args.overrides])
                results = run_job(cfg, run_dir)
            runs.append({"k": "shift-exact (1/n)" if shift_exact else "learnable", "seed": seed,
                         "map": results["quant.map"], "fp_map": results["fp.map"]})
            print(f"seed {seed} {runs[-1]['k']}: W4A4 mAP {runs[-1]['map']:.4f}", flush=True)
    rows = mean_and_spread(runs, ("k",), ("map",))
    paired = [a["map"] - b["map"] for a, b in zip(runs[0::2], runs[1::2])]  # same seed, learnable - shift-exact
    cost = statistics.fmean(paired)
    spread = statistics.stdev(paired) if len(paired) > 1 else 0.0
    atomic_write_json({"runs": runs, "rows": rows, "cost_map": cost, "cost_map_std": spread}, args.out)
    md = "| k | seeds | W4A4 mAP (mean ± std) |\n|---|---|---|\n" + "".join(
        f"| {r['k']} | {r['n']} | {r['map']:.4f} ± {r['map_std']:.4f} |\n" for r in rows)
    md += f"\nshift-exact costs {cost:.4f} ± {spread:.4f} mAP (learnable minus shift-exact, per seed)\n"
    atomic_write(Path(args.out).with_suffix(".md"), lambda tmp: Path(tmp).write_text(md))
    print(md)


if __name__ == "__main__":
    main()

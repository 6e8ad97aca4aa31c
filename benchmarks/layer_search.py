"""The accuracy-driven per-layer search, measured against its baselines in one process.

Classifier (the embedded TinyResNet on ten confusable shapes), W4A4, one FP model:

* FP32; W4A4 with uniform min/max ranges; the same + search; W4A4 with the default ranges
  (MSE weights, percentile activations); the same + search;
* each for class-balanced and for random calibration / validation sets of the same sizes, drawn
  from the pool split (balanced as generated, or long-tailed with ``--pool-decay``), over
  ``--seeds`` (mean and spread);
* test and validation accuracy, the share of the min/max-to-FP gap the search recovers on test,
  evaluations, minutes, average bits; and the cost of one sensitivity pass with the cached stage
  inputs against full evaluations (same numbers, time ratio).

Detector (the YOLO-style nano detector): the ``yolo_w4a4_search`` job (Reg-PTQ calibration on a
balanced calibration set, then the search on validation mAP): test mAP before and after, the
cost; next to the plain ``yolo_w4a4`` job (its usual 256 first calibration images).

    python benchmarks/layer_search.py --out benchmarks/results/layer_search
    python benchmarks/layer_search.py --parts classifier --seeds 0 1 -- num_threads=1
    python benchmarks/layer_search.py --parts classifier --pool-decay 0.75 --out benchmarks/results/layer_search_long_tail \
        -- search.calib_per_class=5 search.val_per_class=10

Detector, balanced vs random sets: the ``yolo_w4a4_search`` job per selection and seed
(``--parts detector_selection``; run the two selections in parallel and merge them with
``--combine a.json b.json --out c``).

Writes ``<out>.json`` (every run and the summaries) and ``<out>.md`` (the tables).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import Subset, default_collate

from lightning_ptq.job import run_job
from lightning_ptq.classify import evaluate_accuracy
from lightning_ptq.classify.task import load_classification_data_and_model
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write_json
from lightning_ptq.pipeline import quantize_and_calibrate
from lightning_ptq.quant import QuantConfig
from lightning_ptq.report import mean_and_spread
from lightning_ptq.search import FunctionEvaluator, StagedEvaluator, accuracy, search_layers
from lightning_ptq.search.job import search_config, select_sets, subset_batches

INITS = {"minmax": {"w_init": "minmax", "a_init": "minmax"}, "default": {}}  # {} keeps the config's
SELECTIONS = ("balanced", "random")


def long_tail(labels: list[int], decay: float) -> list[int]:
    """Pool indices that keep ``decay ** c`` of the images of class ``c`` (a long-tailed pool, as
    real data is; the generated pool is balanced)."""
    kept = []
    for c in sorted(set(labels)):
        of_class = [i for i, label in enumerate(labels) if label == c]
        kept += of_class[: max(1, round(len(of_class) * decay ** c))]
    return sorted(kept)


def classifier_runs(overrides: list[str], seeds: list[int], pool_decay: float | None) -> tuple[list[dict], dict]:
    cfg = compose_config(["+recipe=classifier_w4a4_search", "logger=none", "trainer.enable_progress_bar=false",
                          *overrides])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    datamodule, fp_model = load_classification_data_and_model(cfg)
    test = datamodule.test_dataloader()
    fp_test = evaluate_accuracy(fp_model, test)
    pool_labels = datamodule.labels("pool")
    pool_ids = long_tail(pool_labels, pool_decay) if pool_decay else list(range(len(pool_labels)))
    pool, labels = Subset(datamodule.dataset("pool"), pool_ids), [[pool_labels[i]] for i in pool_ids]
    runs, cache = [], {}
    for selection in SELECTIONS:
        for seed in seeds:
            node = OmegaConf.merge(cfg.search, {"selection": selection, "seed": seed})
            calib_idx, val_idx = select_sets(labels, datamodule.num_classes, datamodule.class_names, node)
            calib = subset_batches(pool, calib_idx, cfg.calib.batch_size, default_collate)
            val = subset_batches(pool, val_idx, cfg.calib.batch_size, default_collate)
            fp_val = accuracy(torch.cat([fp_model(x) for x, _ in val]), torch.cat([y for _, y in val]))
            for init, init_overrides in INITS.items():
                L.seed_everything(seed, verbose=False)
                qcfg = QuantConfig.from_dict({**OmegaConf.to_container(cfg.quant, resolve=True), **init_overrides})
                qmodel, _ = quantize_and_calibrate(fp_model, qcfg, calib, cfg.calib, cfg.trainer)
                before = evaluate_accuracy(qmodel, test)
                if not cache and selection == "balanced":
                    cache = cache_cost(qmodel, val, cfg)
                result = search_layers(qmodel, calib, StagedEvaluator(val), search_config(cfg.search, "max"),
                                       progress=False)
                after = evaluate_accuracy(qmodel, test)
                runs.append({
                    "selection": selection, "seed": seed, "init": init, "fp_test": fp_test, "fp_val": fp_val,
                    "test_start": before, "test_final": after, "val_start": result.start_metric,
                    "val_final": result.final_metric, "evaluations": sum(result.evaluations.values()),
                    "minutes": sum(result.seconds.values()) / 60, "targets": sum(r.target for r in result.layers),
                    "float_layers": len(result.float_layers), **result.average_bits(),
                    "calib_images": len(calib_idx), "val_images": len(val_idx), "pool_images": len(pool_ids),
                })
                print({k: round(v, 4) if isinstance(v, float) else v for k, v in runs[-1].items()}, flush=True)
    return runs, cache


def cache_cost(qmodel, val: list, cfg) -> dict:
    """One sensitivity pass (every layer alone) with the cached stage inputs and with full
    evaluations; the numbers must agree, the time is what caching saves."""
    labels = torch.cat([y for _, y in val])
    full = FunctionEvaluator(lambda m: accuracy(torch.cat([m(x) for x, _ in val]), labels))
    config = search_config(OmegaConf.merge(cfg.search, {"target": 0.0}), "max")  # sensitivity only
    timings, drops = {}, {}
    for name, evaluator in (("cached", StagedEvaluator(val)), ("full", full)):
        model = copy.deepcopy(qmodel)
        start = time.perf_counter()
        result = search_layers(model, [val[0]], evaluator, config, progress=False)
        timings[name] = time.perf_counter() - start
        drops[name] = [r.sensitivity for r in result.layers]
    same = max(abs(a - b) for a, b in zip(drops["cached"], drops["full"]))
    return {"cached_seconds": timings["cached"], "full_seconds": timings["full"],
            "speedup": timings["full"] / timings["cached"], "max_sensitivity_difference": same,
            "evaluations": len(drops["cached"]) + 2}


def summarise_classifier(runs: list[dict]) -> list[dict]:
    rows = mean_and_spread(runs, ("selection", "init"), (
        "test_start", "test_final", "val_start", "val_final", "minutes", "evaluations", "avg_w_bits", "avg_a_bits"))
    for row, group in ((r, [x for x in runs if x["selection"] == r["selection"] and x["init"] == r["init"]])
                       for r in rows):
        recovered = [(x["test_final"] - x["test_start"]) / (x["fp_test"] - x["test_start"]) for x in group]
        row["gap_recovered"] = sum(recovered) / len(recovered)
        row["gap_recovered_min"] = min(recovered)
        row["fp_test"] = group[0]["fp_test"]
    return rows


def detector_runs(overrides: list[str], out: Path) -> dict:
    common = ["logger=none", "trainer.enable_progress_bar=false", *overrides]
    # the same calibration as the search recipe's (no weight tuning), on the first calib images
    plain = run_job(compose_config(["+recipe=yolo_w4a4", "calib.weight_lr=0", *common]), out.with_name(out.name + "_yolo_plain"))
    start = time.perf_counter()
    searched = run_job(compose_config(["+recipe=yolo_w4a4_search", *common]), out.with_name(out.name + "_yolo_search"))
    searched["job_minutes"] = (time.perf_counter() - start) / 60
    keep = lambda r: {k: v for k, v in r.items() if isinstance(v, (int, float, bool))}  # noqa: E731
    return {"yolo_w4a4": keep(plain), "yolo_w4a4_search": keep(searched)}


def detector_selection_runs(overrides: list[str], seeds: list[int], selections: list[str], out: Path) -> list[dict]:
    """The ``yolo_w4a4_search`` job per selection and seed: test and validation mAP before and
    after the search, its cost and bits."""
    runs = []
    for selection in selections:
        for seed in seeds:
            r = run_job(compose_config(["+recipe=yolo_w4a4_search", "logger=none", "trainer.enable_progress_bar=false",
                                    f"search.selection={selection}", f"search.seed={seed}", f"seed={seed}", *overrides]),
                    out.with_name(f"{out.name}_yolo_{selection}_{seed}"))
            runs.append({"selection": selection, "seed": seed, "fp_test": r["fp.map"], "test_start": r["search.test_start"],
                         "test_final": r["search.test_final"], "val_start": r["search.val_start"],
                         "val_final": r["search.val_final"], "evaluations": r["search.evaluations"],
                         "minutes": r["search.minutes"], "avg_w_bits": r["search.avg_w_bits"],
                         "avg_a_bits": r["search.avg_a_bits"], "calib_images": r["calib_images"]})
            print(runs[-1], flush=True)
    return runs


def detector_selection_table(runs: list[dict]) -> dict:
    rows = mean_and_spread(runs, ("selection",), ("test_start", "test_final", "val_start", "val_final", "evaluations",
                                                   "minutes", "avg_w_bits", "avg_a_bits", "calib_images"))
    return {
        "title": f"YOLO-style detector W4A4 + search: balanced vs random sets (FP32 test mAP {runs[0]['fp_test']:.4f})",
        "columns": ["selection", "test before", "test searched", "val before", "val searched", "evaluations",
                    "search min", "avg W / A bits", "calib images", "runs"],
        "rows": [[r["selection"], _pm(r, "test_start", 1, 4), _pm(r, "test_final", 1, 4), _pm(r, "val_start", 1, 4),
                  _pm(r, "val_final", 1, 4), f"{r['evaluations']:.0f}", f"{r['minutes']:.1f}",
                  f"{r['avg_w_bits']:.2f} / {r['avg_a_bits']:.2f}", f"{r['calib_images']:.0f}", str(r["n"])]
                 for r in rows],
        "caption": "mean ± sample std over seeds; each seed draws its own sets and calibrates on them",
    }


def _pm(row: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    return f"{row[key] * scale:.{digits}f} ± {row[key + '_std'] * scale:.{digits}f}"


def classifier_table(rows: list[dict], cache: dict, pool: str) -> dict:
    caption = (f"sensitivity pass: cached stage inputs {cache['cached_seconds']:.1f} s vs full evaluations "
               f"{cache['full_seconds']:.1f} s ({cache['speedup']:.1f}x), max difference "
               f"{cache['max_sensitivity_difference']:.1e}") if cache else ""
    return {
        "title": f"Classifier W4A4: per-layer search, {pool} (FP32 test accuracy {rows[0]['fp_test']:.2%})",
        "columns": ["selection", "ranges", "test before", "test searched", "gap recovered (test)", "val before",
                    "val searched", "evaluations", "minutes", "avg W / A bits", "runs"],
        "rows": [[r["selection"], r["init"], _pm(r, "test_start"), _pm(r, "test_final"),
                  f"{r['gap_recovered']:.0%} (min {r['gap_recovered_min']:.0%})", _pm(r, "val_start"),
                  _pm(r, "val_final"), f"{r['evaluations']:.0f}", f"{r['minutes']:.2f}",
                  f"{r['avg_w_bits']:.2f} / {r['avg_a_bits']:.2f}", str(r["n"])] for r in rows],
        "caption": caption,
    }


def detector_table(det: dict) -> dict:
    plain, s = det["yolo_w4a4"], det["yolo_w4a4_search"]
    return {
        "title": f"YOLO-style detector W4A4: test mAP@[.5:.95] (FP32 {plain['fp.map']:.4f})",
        "columns": ["model", "calibration images", "test mAP", "retention"],
        "rows": [
            ["yolo_w4a4 (first 256 calib images)", str(plain["calib_images"]), f"{plain['quant.map']:.4f}",
             f"{plain['retention']:.1%}"],
            ["yolo_w4a4_search: calibrated (balanced set)", str(s["calib_images"]), f"{s['search.test_start']:.4f}",
             f"{s['search.test_start'] / s['fp.map']:.1%}"],
            ["yolo_w4a4_search: searched", str(s["calib_images"]), f"{s['search.test_final']:.4f}",
             f"{s['retention']:.1%}"],
        ],
        "caption": (f"search: {s['search.evaluations']} evaluations, {s['search.minutes']:.1f} min (job "
                    f"{s['job_minutes']:.1f} min); average bits W {s['search.avg_w_bits']:.2f} / A "
                    f"{s['search.avg_a_bits']:.2f}; validation mAP {s['search.val_start']:.4f} -> "
                    f"{s['search.val_final']:.4f}"),
    }


def rich_table(t: dict) -> Table:
    table = Table(title=t["title"], caption=t["caption"])
    for i, c in enumerate(t["columns"]):
        table.add_column(c, justify="left" if i < 2 else "right")
    for row in t["rows"]:
        table.add_row(*row)
    return table


def markdown(t: dict) -> str:
    lines = [f"**{t['title']}**", "", "| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
    lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
    return "\n".join(lines + (["", t["caption"]] if t["caption"] else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["classifier", "detector"],
                        choices=["classifier", "detector", "detector_selection"])
    parser.add_argument("--selections", nargs="+", default=["balanced", "random"], choices=["balanced", "random"])
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="merge the detector_selection runs of these result files (made in parallel), run nothing")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--pool-decay", type=float, default=None,
                        help="keep decay**c of class c's pool images (a long-tailed pool); default: the whole pool")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layer_search"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    report, tables = {"command": " ".join(["python benchmarks/layer_search.py", *sys.argv[1:]])}, []
    if args.combine:
        runs = [run for path in args.combine for run in json.loads(path.read_text())["detector_selection"]]
        report["detector_selection"] = runs
        tables.append(detector_selection_table(runs))
        args.parts = []
    if "classifier" in args.parts:
        runs, cache = classifier_runs(args.overrides, args.seeds, args.pool_decay)
        rows = summarise_classifier(runs)
        pool = f"long-tailed pool of {runs[0]['pool_images']} images (decay {args.pool_decay:g})" \
            if args.pool_decay else f"balanced pool of {runs[0]['pool_images']} images"
        report["classifier"] = {"runs": runs, "summary": rows, "cache": cache, "pool": pool}
        tables.append(classifier_table(rows, cache, pool))
    if "detector" in args.parts:
        report["detector"] = detector_runs(args.overrides, args.out)
        tables.append(detector_table(report["detector"]))
    if "detector_selection" in args.parts:
        report["detector_selection"] = detector_selection_runs(args.overrides, args.seeds, args.selections, args.out)
        tables.append(detector_selection_table(report["detector_selection"]))
    for t in tables:
        Console().print(rich_table(t))
    atomic_write_json(report, args.out.with_suffix(".json"))
    args.out.with_suffix(".md").write_text("\n\n".join(markdown(t) for t in tables) + "\n")


if __name__ == "__main__":
    main()

"""The keypoint method against plain soft-argmax, in float and quantized, in one harness.

{plain soft-argmax, + cosine / beta, + compensation} x {FP32, W8A8, W4A4} x grid {8x8, 16x16} x
seeds. Every variant is trained by the project on the same embedded data (one FP model per
variant, grid and seed: ``model.train.seed``), quantized with the same recipe and calibrated on
the same images. A fourth row, "cosine, compensated at inference", switches compensation on in
the cosine model without retraining it (``--infer-comp``: in the plain model too). The ablation
``--variants plain_comp`` trains plain linear logits with the compensation. (Inference speed:
``benchmarks/keypoint_speed.py``; how much of each model's error is a pull toward the centre:
``benchmarks/keypoint_bias.py``.)

    python benchmarks/keypoints.py                                       # everything
    python benchmarks/keypoints.py --grids 8 --seeds 0 --variants plain cosine_comp
    python benchmarks/keypoints.py -- model.train.epochs=10 num_threads=1   # Hydra overrides after --
    python benchmarks/keypoints.py --combine out_a out_b --out out        # merge runs made in parallel

Writes JSON (every run, and mean / spread per variant, grid and precision), a markdown table and
a plot of NME against grid size to ``--out`` (a folder).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import lightning as L
import matplotlib
import torch
from omegaconf import OmegaConf
from rich.console import Console

from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write_json
from lightning_ptq.keypoints.task import keypoint_model_kwargs, load_keypoint_data_and_model
from lightning_ptq.keypoints.train import evaluate_keypoints
from lightning_ptq.pipeline import calibration_batches, quantize_and_calibrate
from lightning_ptq.quant import QuantConfig
from lightning_ptq.report import mean_and_spread

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANTS = {  # key -> (label, keypoint group option)
    "plain": ("plain soft-argmax", "plain"),
    "plain_comp": ("plain + compensation", "plain_comp"),
    "cosine": ("+ cosine / beta", "cosine"),
    "cosine_comp": ("+ compensation (ours)", "cosine_comp"),
}
DEFAULT_VARIANTS = ["plain", "cosine", "cosine_comp"]
# A model trained without compensation, with it switched on at inference only (no retraining).
INFER_COMP = {"plain": "plain_infer_comp", "cosine": "cosine_infer_comp"}
LABELS = {**{k: v[0] for k, v in VARIANTS.items()}, "plain_infer_comp": "plain, compensated at inference",
          "cosine_infer_comp": "cosine, compensated at inference"}
METRICS = ("nme", "pck", "oks_ap")


def label(variant: str, beta: float) -> str:
    return LABELS[variant] if variant.startswith("plain") else f"{LABELS[variant]}, beta {beta:g}"


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and spread of each metric per (variant, beta, grid, precision), in run order."""
    rows = mean_and_spread(runs, ("variant", "beta", "grid", "precision"), (*METRICS, "nme_vs_fp"))
    return [{**row, "label": label(row["variant"], row["beta"])} for row in rows]


def markdown(rows: list[dict]) -> str:
    lines = ["| grid | variant | precision | NME | NME / FP32 | PCK@0.05 | OKS AP |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['grid']}x{r['grid']} | {r['label']} | {r['precision']} | {r['nme']:.4f} ± {r['nme_std']:.4f} | "
            f"{r['nme_vs_fp']:.3f} | {r['pck']:.3f} ± {r['pck_std']:.3f} | {r['oks_ap']:.3f} ± {r['oks_ap_std']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    fig, axes = plt.subplots(1, len(precisions), figsize=(4.2 * len(precisions), 3.6), squeeze=False, sharey=True)
    for ax, precision in zip(axes[0], precisions):
        for name in dict.fromkeys(r["label"] for r in rows):
            pts = sorted((r["grid"], r["nme"], r["nme_std"]) for r in rows
                         if r["label"] == name and r["precision"] == precision)
            if pts:
                grids, means, stds = zip(*pts)
                ax.errorbar(grids, means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_title(precision)
        ax.set_xlabel("grid side (cells)")
        ax.set_xticks(sorted({r["grid"] for r in rows}))
    axes[0][0].set_yscale("log")  # one failing variant must not flatten the others
    axes[0][0].set_ylabel("NME (test split, log scale)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/keypoints")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--infer-comp", action="store_true",
                        help="also evaluate the plain and cosine models with compensation switched on at inference")
    parser.add_argument("--grids", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--bits", nargs="+", default=["8,8", "4,4"], help="w,a pairs (FP32 is always run)")
    parser.add_argument("--combine", nargs="+", metavar="FOLDER", help="merge the runs of these result folders, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --), e.g. -- model.train.epochs=10")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        parts = [json.loads((Path(folder) / "keypoints.json").read_text()) for folder in args.combine]
        write(out, unique_runs([r for p in parts for r in p["runs"]]),
              {folder: p["overrides"] for folder, p in zip(args.combine, parts)}, Console())
        return
    console = Console()
    runs = []
    for grid in args.grids:
        for variant in args.variants:
            for seed in args.seeds:
                cfg, datamodule, fp_model = load_variant(variant, grid, seed, args.overrides)
                batches = calibration_batches(datamodule, cfg.calib.num_images)
                models = {variant: fp_model}
                if variant in INFER_COMP and (args.infer_comp or variant == "cosine"):
                    models[INFER_COMP[variant]] = copy.deepcopy(fp_model)
                    models[INFER_COMP[variant]].compensate = True
                for name, model in models.items():
                    runs += evaluate_variant(name, model, grid, seed, args.bits, batches, cfg, datamodule, console)
                atomic_write_json({"runs": runs, "summary": summarise(runs), "overrides": args.overrides},
                                  out / "keypoints.json")  # progress so far
    write(out, runs, args.overrides, console)


def load_variant(variant: str, grid: int, seed: int, overrides: list[str]):
    """``(cfg, datamodule, FP model)`` of one variant, grid and training seed: the model is trained
    on first use and cached (``benchmarks/keypoint_bias.py`` reads the same cache)."""
    cfg = compose_config(["+recipe=keypoint_w4a4", "logger=none", f"keypoint={VARIANTS[variant][1]}",
                          f"keypoint.grid={grid}", f"model.train.seed={seed}", *overrides])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    datamodule, model = load_keypoint_data_and_model(cfg, keypoint_model_kwargs(cfg))
    return cfg, datamodule, model


def unique_runs(runs: list[dict]) -> list[dict]:
    """``runs`` with each (grid, variant, beta, precision, seed) kept once, the first seen: a second
    invocation for other bit widths evaluates the same cached FP32 model again."""
    seen: dict[tuple, dict] = {}
    for r in runs:
        seen.setdefault((r["grid"], r["variant"], r["beta"], r["precision"], r["seed"]), r)
    return list(seen.values())


def write(out: Path, runs: list[dict], overrides, console: Console) -> None:
    """JSON, markdown table and plot of ``runs`` in ``out``; the table is printed too. ``overrides``:
    the Hydra overrides of the run (per source folder for combined runs)."""
    rows = summarise(runs)
    atomic_write_json({"runs": runs, "summary": rows, "overrides": overrides}, out / "keypoints.json")
    (out / "keypoints.md").write_text(markdown(rows))
    plot(rows, out / "keypoints_nme_vs_grid.png")
    console.print(markdown(rows))


def evaluate_variant(name: str, fp_model, grid: int, seed: int, bits: list[str], batches: list, cfg,
                     datamodule, console: Console) -> list[dict]:
    """FP32 and each quantized precision of one trained model: one run record per precision."""
    fp = evaluate_keypoints(fp_model, datamodule.test_dataloader(), progress=False)
    common = {"variant": name, "beta": float(cfg.keypoint.beta), "grid": grid, "seed": seed}
    records = [{**common, "precision": "FP32", "nme_vs_fp": 1.0, "calib_seconds": 0.0, **fp}]
    for pair in bits:
        w_bits, a_bits = (int(b) for b in pair.split(","))
        L.seed_everything(seed, verbose=False)
        qcfg = QuantConfig.from_dict({**OmegaConf.to_container(cfg.quant, resolve=True),
                                      "w_bits": w_bits, "a_bits": a_bits})
        qmodel, seconds = quantize_and_calibrate(fp_model, qcfg, batches, cfg.calib, cfg.trainer)
        quant = evaluate_keypoints(qmodel, datamodule.test_dataloader(), progress=False)
        records.append({**common, "precision": f"W{w_bits}A{a_bits}", "nme_vs_fp": quant["nme"] / fp["nme"],
                        "calib_seconds": seconds, **quant})
    for r in records:
        console.print(f"grid {grid} {label(name, r['beta'])} seed {seed} {r['precision']}: NME {r['nme']:.4f} "
                      f"({r['nme_vs_fp']:.3f} x FP32), PCK {r['pck']:.3f}, OKS AP {r['oks_ap']:.3f}")
    return records


if __name__ == "__main__":
    main()

"""Regression-aware calibration against the PTQ baselines, in one harness and one process.

Every method starts from the same FP checkpoint, the same test split and, for a given seed, the
same calibration images in the same order; learned methods get the same step budget.

    python benchmarks/reg_ptq.py                                   # all methods, W8A8/W4A8/W4A4, seeds 0 1 2
    python benchmarks/reg_ptq.py --bits 4,4 --seeds 0 --methods percentile laq_fgl
    python benchmarks/reg_ptq.py --seeds 0 -- calib.steps=400      # Hydra overrides of the main job after --
    python benchmarks/reg_ptq.py --combine a.json b.json --out c   # merge runs made side by side

Writes JSON (every run and the mean / spread per method and bit width), a markdown table and a
retention plot per bit width next to each other: ``<out>.json``, ``<out>.md``, ``<out>_<bits>.png``.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import lightning as L
import matplotlib
import torch
from omegaconf import OmegaConf
from rich.console import Console

from lightning_ptq.detection import eval_kwargs, load_data_and_model
from lightning_ptq.pipeline import quantize_and_calibrate
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write_json
from lightning_ptq.detection import evaluate_detections
from lightning_ptq.quant import QuantConfig
from lightning_ptq.report import mean_and_spread

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LAQ_HEAD = {"laq_patterns": ["head.*"], "laq_on": "weights"}
LAQ_ALL = {"laq_patterns": ["*"], "laq_on": "both"}  # every layer's weights and input activations
PATENT_FILTER = {"combine": "union", "filter_cls": True, "conf_thr": 0.3, "iou_thr": 0.5}
# The published paper's "full quantization": first layer 8-bit, last prediction layers float.
# Our default ("full") quantizes those too at the benchmark's bit widths.
PAPER_SETTING = {
    "yolo": [{"pattern": "stem.0.conv", "w_bits": 8, "a_bits": 8}, {"pattern": "head.*.*.2", "float_": True}],
    "fcos": [{"pattern": "backbone.body.conv1", "w_bits": 8, "a_bits": 8},
             {"pattern": "head.classification_head.cls_logits", "float_": True},
             {"pattern": "head.regression_head.bbox_*", "float_": True}],
}
# Feature matching (Reg-PTQ's local term): the backbone stages and neck outputs of each family.
FEATURE_MODULES = {
    "yolo": ["stem", "stage3", "stage4", "stage5", "top_down4", "top_down3", "bottom_up4", "bottom_up5"],
    "fcos": ["backbone.body.layer1", "backbone.body.layer2", "backbone.body.layer3", "backbone.body.layer4",
             "backbone.fpn"],
}
# Placeholders in METHODS: replaced by --weight-lr, and by feature matching at the family's
# FEATURE_MODULES with --feature-weight (plain, or Fisher-weighted).
WEIGHT_LR, FEATURES, FEATURES_FISHER = "weight_lr", "features", "features_fisher"
# key -> (label, quant overrides, calib overrides); "steps": 0 means ranges only. FGL settings
# default to conf/calib/distill.yaml (the paper's filter).
METHODS = {
    # baselines
    "minmax": ("min/max", {"w_init": "minmax", "a_init": "minmax"}, {"steps": 0}),
    "percentile": ("percentile", {"w_init": "percentile", "a_init": "percentile"}, {"steps": 0}),
    "mse": ("MSE search", {"w_init": "mse", "a_init": "mse"}, {"steps": 0}),
    "lsq": ("learned scales, output MSE", {}, {"loss": "output_mse"}),
    "qdrop": ("block reconstruction (QDrop)", {}, {"steps": 0, "recon": {"steps": 200}}),
    "qdrop_w": ("block reconstruction (QDrop) + weights", {}, {"steps": 0, "recon": {"steps": 200, "weight_lr": WEIGHT_LR}}),
    # ours and its ablations
    "fgl": ("FGL without LAQ", {}, {"loss": "fgl"}),
    "laq": ("LAQ without filter", LAQ_HEAD, {"loss": "output_mse"}),
    "laq_fgl": ("LAQ + FGL (ours)", LAQ_HEAD, {"loss": "fgl"}),
    "laq_fgl_union": ("LAQ + FGL, patent filter", LAQ_HEAD, {"loss": "fgl", "fgl": PATENT_FILTER}),
    # with weight tuning (AdaQuant-style: weights and biases learn too, at --weight-lr)
    "lsq_w": ("learned scales + weights, output MSE", {}, {"loss": "output_mse", "weight_lr": WEIGHT_LR}),
    "fgl_w": ("FGL + weights, without LAQ", {}, {"loss": "fgl", "weight_lr": WEIGHT_LR}),
    "laq_w": ("LAQ + weights, without filter", LAQ_HEAD, {"loss": "output_mse", "weight_lr": WEIGHT_LR}),
    "laq_fgl_w": ("LAQ + FGL + weights (ours)", LAQ_HEAD, {"loss": "fgl", "weight_lr": WEIGHT_LR}),
    # with feature matching (the local term) as well
    "lsq_feat_w": ("learned scales + weights, output MSE + features", {},
                   {"loss": "output_mse", "weight_lr": WEIGHT_LR, "features": FEATURES}),
    "laq_fgl_feat_w": ("LAQ + FGL + features + weights", LAQ_HEAD,
                       {"loss": "fgl", "weight_lr": WEIGHT_LR, "features": FEATURES}),
    "recon_lsq_w": ("block recon + learned scales, output MSE, all + weights", {},
                    {"loss": "output_mse", "weight_lr": WEIGHT_LR, "recon": {"steps": 200, "weight_lr": WEIGHT_LR}}),
    "laq_recon_fgl_w": ("LAQ + block recon + FGL, all + weights", LAQ_HEAD,
                        {"loss": "fgl", "weight_lr": WEIGHT_LR, "recon": {"steps": 200, "weight_lr": WEIGHT_LR}}),
    "laq_fgl_fisher_w": ("LAQ + FGL + Fisher-weighted features + weights", LAQ_HEAD,
                         {"loss": "fgl", "weight_lr": WEIGHT_LR, "features": FEATURES_FISHER}),
    # variants tried on seed 0 (see docs/research_log.md)
    "laq_fgl_joint": ("LAQ + FGL + dense term", LAQ_HEAD, {"loss": "fgl", "fgl": {"lambda_local": 1.0}}),
    "laq_fgl_qdrop": ("LAQ + FGL + QDrop", LAQ_HEAD, {"loss": "fgl", "drop_prob": 0.5}),
    "laq_recon_fgl": ("LAQ + block recon + FGL", LAQ_HEAD, {"loss": "fgl", "recon": {"steps": 200}}),
    "laq_all": ("LAQ on every layer, output MSE", LAQ_ALL, {"loss": "output_mse"}),
}
DEFAULT_METHODS = ["minmax", "percentile", "mse", "lsq", "qdrop", "fgl", "laq", "laq_fgl", "laq_fgl_union"]


def resolve_placeholders(calib_overrides: dict, weight_lr: float, feature_weight: float, family: str) -> dict:
    """A method's calib overrides with ``WEIGHT_LR`` set to ``weight_lr`` and ``FEATURES`` /
    ``FEATURES_FISHER`` to feature matching at ``family``'s modules with ``feature_weight``."""
    features = {"weight": feature_weight, "modules": FEATURE_MODULES[family]}
    values = {WEIGHT_LR: weight_lr, FEATURES: features, FEATURES_FISHER: {**features, "fisher": True}}

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return values.get(value, value) if isinstance(value, str) else value
    return resolve(calib_overrides)


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 20 ms
    from /proc (Linux); the GPU's own peak where CUDA is used."""

    def __enter__(self):
        self.peak, self._stop = _rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def seeded_batches(datamodule, num_images: int, batch_size: int, seed: int) -> list:
    """``num_images`` images of the calib split picked and ordered by ``seed``, in batches."""
    images, targets = [], []
    for x, t in datamodule.calib_dataloader():
        images.append(x)
        targets.extend(t)
    images = torch.cat(images)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_images]
    return [(images[order[i:i + batch_size]], [targets[j] for j in order[i:i + batch_size].tolist()])
            for i in range(0, len(order), batch_size)]


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and spread (sample std; 0 for one seed) per (bits, method)."""
    rows = mean_and_spread(runs, ("bits", "method"), ("map", "map50", "map75", "retention", "calib_seconds",
                                                      "peak_rss_mib"))
    for row in rows:
        row["seeds"] = row.pop("n")
    return rows


def markdown(rows: list[dict], fp: dict, setting: str, split: str = "test") -> str:
    where = {"full": "every layer at the given bits, detection head included",
             "paper": "first layer 8-bit, last prediction layers float (the published paper's setting)"}[setting]
    lines = [f"Measured on the {split} split. FP32: mAP {fp['map']:.4f}, mAP50 {fp['map50']:.4f}, "
             f"mAP75 {fp['map75']:.4f}. Quantized: {where}.", "",
             "| bits | method | mAP | mAP50 | mAP75 | retention | calib s | peak RSS MiB | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pm = lambda k, f: f"{r[k]:{f}} ± {r[k + '_std']:{f}}"  # noqa: E731
        lines.append(f"| {r['bits']} | {r['method']} | {pm('map', '.4f')} | {pm('map50', '.4f')} | "
                     f"{pm('map75', '.4f')} | {r['retention']:.1%} ± {r['retention_std']:.1%} | "
                     f"{r['calib_seconds']:.0f} | {r['peak_rss_mib']:.0f} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    for bits in sorted({r["bits"] for r in rows}):
        sel = [r for r in rows if r["bits"] == bits]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(sel) + 1.2))
        ax.barh([r["method"] for r in sel], [100 * r["retention"] for r in sel],
                xerr=[100 * r["retention_std"] for r in sel], color="tab:blue")
        ax.axvline(90, color="tab:red", ls="--", lw=1)
        ax.set_xlabel("retention of FP mAP@[.5:.95] (%)")
        ax.set_title(f"{bits}: mean ± std over seeds")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(path.with_name(f"{path.name.removesuffix('.png')}_{bits}.png"), dpi=110)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/reg_ptq")
    parser.add_argument("--bits", nargs="+", default=["8,8", "4,8", "4,4"], help="w,a pairs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--setting", choices=["full", "paper"], default="full",
                        help="full: every layer at the given bits; paper: first layer 8-bit, last layers float")
    parser.add_argument("--weight-lr", type=float, default=0.05,
                        help="learning rate of the weights and biases in the *_w methods, in weight grid steps (weight tuning)")
    parser.add_argument("--feature-weight", type=float, default=1.0,
                        help="weight of feature matching in the *_feat_* methods")
    parser.add_argument("--split", default="test", choices=["test", "val"],
                        help="where mAP is measured (choose settings on val, report on test)")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="merge the runs of earlier outputs (processes run side by side) into --out; runs nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --), e.g. -- calib.steps=400")
    args = parser.parse_args()
    out = Path(args.out)
    if args.combine:
        docs = [json.loads(path.read_text()) for path in args.combine]
        # older outputs lack weight_lr and feature_weight
        runs = [{"weight_lr": 0.0, "feature_weight": 0.0, **run} for doc in docs for run in doc["runs"]]
        for key in ("weight_lr", "feature_weight"):
            if len({run[key] for run in runs if run[key] > 0}) > 1:  # a sweep: name the value in the label
                runs = [{**run, "method": f"{run['method']}, {key} {run[key]:g}"} if run[key] > 0 else run
                        for run in runs]
        first = docs[0]
        write_outputs(out, first["fp"], first["setting"], first.get("split", "test"), runs, first["config"],
                      sources=[str(path) for path in args.combine])
        return
    cfg = compose_config(["logger=none", *args.overrides])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    datamodule, fp_model = load_data_and_model(cfg)
    layer_overrides = OmegaConf.to_container(cfg.quant.overrides) + (PAPER_SETTING[cfg.model.name] if args.setting == "paper" else [])
    eval_loader = datamodule.test_dataloader if args.split == "test" else datamodule.val_dataloader
    fp = evaluate_detections(fp_model, eval_loader(), **eval_kwargs(cfg))
    runs = []
    for seed in args.seeds:
        batches = seeded_batches(datamodule, cfg.calib.num_images, cfg.calib.batch_size, seed)
        for bits in args.bits:
            w_bits, a_bits = map(int, bits.split(","))
            for name in args.methods:
                label, quant_overrides, calib_overrides = METHODS[name]
                L.seed_everything(seed, verbose=False)
                qcfg = QuantConfig.from_dict({**OmegaConf.to_container(cfg.quant), **quant_overrides,
                                              "w_bits": w_bits, "a_bits": a_bits, "overrides": layer_overrides})
                calib = OmegaConf.merge(cfg.calib, resolve_placeholders(calib_overrides, args.weight_lr,
                                                                        args.feature_weight, cfg.model.name))
                with PeakRSS() as mem:
                    qmodel, seconds = quantize_and_calibrate(fp_model, qcfg, batches, calib, cfg.trainer)
                m = evaluate_detections(qmodel, eval_loader(), **eval_kwargs(cfg))
                runs.append({"bits": f"W{w_bits}A{a_bits}", "method": label, "setting": args.setting, "seed": seed,
                             "weight_lr": float(calib.weight_lr), "feature_weight": float(calib.features.weight),
                             **{k: float(v) for k, v in m.items()}, "retention": float(m["map"] / fp["map"]) if fp["map"] > 0 else 0.0,
                             "calib_seconds": seconds, "peak_rss_mib": mem.peak, "peak_gpu_mib": mem.gpu_peak})
                Console().print(f"seed {seed} {runs[-1]['bits']} {label}: mAP {m['map']:.4f} "
                                f"({runs[-1]['retention']:.1%} of FP), {seconds:.0f} s")

    write_outputs(out, {k: float(v) for k, v in fp.items()}, args.setting, args.split, runs,
                  OmegaConf.to_container(cfg, resolve=True))


def write_outputs(out: Path, fp: dict, setting: str, split: str, runs: list[dict], config: dict, **extra) -> None:
    """``out``.json (every run, mean and spread per method and bit width), .md (the table) and one
    retention plot per bit width."""
    rows = summarise(runs)
    named = lambda suffix: out.with_name(out.name + suffix)  # noqa: E731  (not with_suffix: out may hold a dot, 'w0.05')
    atomic_write_json({"fp": fp, "setting": setting, "split": split, "summary": rows, "runs": runs, "config": config,
                       "finished": time.time(), **extra}, named(".json"))
    table = markdown(rows, fp, setting, split)
    named(".md").write_text(table)
    plot(rows, named(".png"))
    print(table)


if __name__ == "__main__":
    main()

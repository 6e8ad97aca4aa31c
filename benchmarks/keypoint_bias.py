"""How much of a trained keypoint model's error is the soft-argmax pull toward the grid centre.

The compensation operator removes one kind of error: the soft-argmax expectation pulled toward
the centre of the grid (every cell keeps some probability). Applied to a trained model after the
fact, it can cut that model's NME by at most the part that is such a pull (trained with it, it
also changes what the network learns, which this does not bound). This script measures the
pull in trained FP32 models (the same cached models as ``benchmarks/keypoints.py``), per
variant, on the test split:

* ``shrink``: per axis, the least-squares slope of ``pred - c`` against ``true - c`` on the val
  split (``c`` the grid centre): 1 means no pull toward the centre, below 1 a pull.
* ``NME, corrected``: the test NME after the best correction of each predicted coordinate by
  its position: per axis, the predictions are put in 4-pixel bins and each bin's mean error on
  the val split is subtracted. It knows the labels, which no compensation operator does, and can
  undo any pull toward the centre that depends on where the point is predicted (linear or not),
  so its cut bounds what such a correction can give. The compensation operator adapts to each
  distribution's sharpness as well, which a correction by position cannot, so it is also
  measured directly:
* ``NME, compensation toggled``: the same model with its compensation switched the other way at
  inference (on for a model trained without it, off for one trained with it);
* the NME of the points nearest the border (true position in the outer cell of either axis),
  where the pull is largest, before and after the correction.

    python benchmarks/keypoint_bias.py                              # plain, cosine, cosine_comp at 8x8, seeds 0 1 2
    python benchmarks/keypoint_bias.py --variants cosine cosine_comp -- keypoint.beta=3

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (mean signed error against distance from the
centre, per variant: a pull toward the centre shows as a line of negative slope).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib
import torch
from rich.console import Console

from lightning_ptq.core.io import atomic_write_json
from lightning_ptq.keypoints.metrics import axis_line_fit, nme
from lightning_ptq.report import mean_and_spread

from keypoints import VARIANTS, label, load_variant  # noqa: E402  (benchmarks/ is the script's folder)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@torch.no_grad()
def predictions(model, loader) -> dict[str, torch.Tensor]:
    """Predicted and true points [N, K, 2], visibility [N, K] and NME normaliser [N] over ``loader``."""
    model.eval()
    out = {"pred": [], "true": [], "visible": [], "norm": []}
    for images, target in loader:
        out["pred"].append(model(images)["coords"].float())
        out["true"].append(target["keypoints"].float())
        out["visible"].append(target["visible"].bool())
        out["norm"].append(target["norm"].float())
    return {k: torch.cat(v) for k, v in out.items()}


def border_nme(p: dict[str, torch.Tensor], pred: torch.Tensor, size: float, cell: float) -> float:
    """NME of the visible points whose true position lies in the outer cell of either axis."""
    t = p["true"]
    near = ((t < cell) | (t > size - cell)).any(-1) & p["visible"]
    return nme(pred, t, near, p["norm"])


def binned_correction(val: dict[str, torch.Tensor], size: float, bin_px: float = 4.0):
    """``pred -> shift``: per axis, the mean of ``true - pred`` over the val split's visible
    points predicted in the same ``bin_px`` wide bin (0 for an empty bin)."""
    edges = torch.arange(bin_px, size, bin_px)
    vis = val["visible"]
    shifts = []
    for axis in range(2):
        pred, true = val["pred"][..., axis][vis], val["true"][..., axis][vis]
        idx = torch.bucketize(pred, edges)
        total = torch.zeros(len(edges) + 1).index_add_(0, idx, true - pred)
        count = torch.zeros(len(edges) + 1).index_add_(0, idx, torch.ones_like(pred))
        shifts.append(total / count.clamp_min(1))
    return lambda pred: torch.stack([shifts[a][torch.bucketize(pred[..., a], edges)] for a in range(2)], -1)


def measure(model, datamodule, size: float, cell: float) -> tuple[dict[str, float], dict]:
    centre = size / 2
    val = predictions(model, datamodule.val_dataloader())
    test = predictions(model, datamodule.test_dataloader())
    toggled = copy.deepcopy(model)
    toggled.compensate = not model.compensate
    toggled = predictions(toggled, datamodule.test_dataloader())
    shrink, _ = axis_line_fit(val["true"], val["pred"], val["visible"], centre)
    fixed = test["pred"] + binned_correction(val, size)(test["pred"])
    before = nme(test["pred"], test["true"], test["visible"], test["norm"])
    after = nme(fixed, test["true"], test["visible"], test["norm"])
    record = {"nme": before, "nme_corrected": after, "cut": 1 - after / before,
              "nme_toggled": nme(toggled["pred"], test["true"], test["visible"], test["norm"]),
              "shrink_x": shrink[0].item(), "shrink_y": shrink[1].item(),
              "border_nme": border_nme(test, test["pred"], size, cell),
              "border_nme_corrected": border_nme(test, fixed, size, cell)}
    vis = test["visible"]
    curve = {"offset": (test["true"][vis] - centre).flatten().tolist(),
             "error": (test["pred"][vis] - test["true"][vis]).flatten().tolist()}
    return record, curve


def markdown(rows: list[dict]) -> str:
    lines = ["| grid | variant | test NME | shrink x / y (val) | NME, corrected by position | cut | "
             "NME, compensation toggled | border NME | border NME, corrected |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['grid']}x{r['grid']} | {r['label']} | {r['nme']:.4f} ± {r['nme_std']:.4f} | "
                     f"{r['shrink_x']:.3f} / {r['shrink_y']:.3f} | {r['nme_corrected']:.4f} | {r['cut']:.1%} | "
                     f"{r['nme_toggled']:.4f} | {r['border_nme']:.4f} | {r['border_nme_corrected']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, dict], size: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = torch.linspace(-size / 2, size / 2, 17)
    for name, curve in curves.items():
        offset, error = torch.tensor(curve["offset"]), torch.tensor(curve["error"])
        idx = torch.bucketize(offset, edges[1:-1])
        centres = (edges[:-1] + edges[1:]) / 2
        means = torch.stack([error[idx == i].mean() if (idx == i).any() else torch.tensor(float("nan"))
                             for i in range(len(centres))])
        ax.plot(centres, means, marker="o", ms=3, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("true position - grid centre (crop pixels)")
    ax.set_ylabel("mean signed error (pixels)")
    ax.set_title("pull toward the centre (test split, FP32)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/keypoint_bias")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --), e.g. -- keypoint.beta=3")
    args = parser.parse_args()
    console, runs, curves = Console(), [], {}
    for variant in args.variants:
        for seed in args.seeds:
            cfg, datamodule, model = load_variant(variant, args.grid, seed, args.overrides)
            size = float(model.image_size)
            record, curve = measure(model, datamodule, size, model.stride)
            runs.append({"variant": variant, "beta": float(cfg.keypoint.beta), "grid": args.grid, "seed": seed,
                         **record})
            name = label(variant, float(cfg.keypoint.beta))
            curves.setdefault(name, {"offset": [], "error": []})
            for key in ("offset", "error"):
                curves[name][key] += curve[key]
            console.print(f"{name} seed {seed}: NME {record['nme']:.4f}, shrink {record['shrink_x']:.3f} / "
                          f"{record['shrink_y']:.3f}, corrected {record['nme_corrected']:.4f} "
                          f"({record['cut']:.1%} cut)")
    keys = ("nme", "nme_corrected", "cut", "nme_toggled", "shrink_x", "shrink_y", "border_nme",
            "border_nme_corrected")
    rows = [{**r, "label": label(r["variant"], r["beta"])}
            for r in mean_and_spread(runs, ("variant", "beta", "grid"), keys)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"runs": runs, "summary": rows, "overrides": args.overrides}, out.with_name(out.name + ".json"))
    out.with_name(out.name + ".md").write_text(markdown(rows))
    plot(curves, size, out.with_name(out.name + ".png"))
    console.print(markdown(rows))


if __name__ == "__main__":
    main()

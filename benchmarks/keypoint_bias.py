"""How much of a trained keypoint model's error is the soft-argmax pull toward the grid centre.

The compensation operator removes one kind of error: the soft-argmax expectation pulled toward
the centre of the grid (every cell keeps some probability). How much it can cut a model's NME is
bounded by how much of that NME is such a pull. This script measures it for trained FP32 models
(the same cached models as ``benchmarks/keypoints.py``), per variant, on the test split:

* ``shrink``: per axis, the least-squares slope of ``pred - c`` against ``true - c`` on the val
  split (``c`` the grid centre): 1 means no pull toward the centre, below 1 a pull.
* ``NME, centre pull removed``: the test NME after the oracle linear correction
  ``c + (pred - c - b) / shrink`` fitted on val (the bias of soft-argmax to first order, with its
  true size measured from the labels, which no compensation operator has);
* the error of the points nearest the border (the outer cell of each axis), where the pull is
  largest, before and after the same correction.

    python benchmarks/keypoint_bias.py                              # plain, cosine, cosine_comp at 8x8, seeds 0 1 2
    python benchmarks/keypoint_bias.py --variants cosine cosine_comp -- keypoint.beta=3

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (mean signed error against distance from the
centre, per variant: a pull toward the centre shows as a line of negative slope).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch
from rich.console import Console

from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.io import atomic_write_json
from lightning_ptq.keypoints.job import keypoint_model_kwargs, load_keypoint_data_and_model
from lightning_ptq.keypoints.metrics import centre_pull, nme, remove_centre_pull
from lightning_ptq.report import mean_and_spread

from keypoints import VARIANTS, label  # noqa: E402  (benchmarks/ is the script's folder)

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


def measure(model, datamodule, size: float, cell: float) -> tuple[dict[str, float], dict]:
    centre = size / 2
    val = predictions(model, datamodule.val_dataloader())
    test = predictions(model, datamodule.test_dataloader())
    slope, offset = centre_pull(val["pred"], val["true"], val["visible"], centre)
    fixed = remove_centre_pull(test["pred"], centre, slope, offset)
    before = nme(test["pred"], test["true"], test["visible"], test["norm"])
    after = nme(fixed, test["true"], test["visible"], test["norm"])
    record = {"nme": before, "nme_pull_removed": after, "cut": 1 - after / before,
              "shrink_x": slope[0].item(), "shrink_y": slope[1].item(),
              "border_nme": border_nme(test, test["pred"], size, cell),
              "border_nme_pull_removed": border_nme(test, fixed, size, cell)}
    vis = test["visible"]
    curve = {"offset": (test["true"][vis] - centre).flatten().tolist(),
             "error": (test["pred"][vis] - test["true"][vis]).flatten().tolist()}
    return record, curve


def markdown(rows: list[dict]) -> str:
    lines = ["| grid | variant | test NME | shrink x / y (val fit) | NME, centre pull removed | cut | "
             "border NME | border NME, pull removed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['grid']}x{r['grid']} | {r['label']} | {r['nme']:.4f} ± {r['nme_std']:.4f} | "
                     f"{r['shrink_x']:.3f} / {r['shrink_y']:.3f} | {r['nme_pull_removed']:.4f} | {r['cut']:.1%} | "
                     f"{r['border_nme']:.4f} | {r['border_nme_pull_removed']:.4f} |")
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
            cfg = compose_config(["+recipe=keypoint_w4a4", "logger=none", f"keypoint={VARIANTS[variant][1]}",
                                  f"keypoint.grid={args.grid}", f"model.train.seed={seed}", *args.overrides])
            if cfg.num_threads:
                torch.set_num_threads(cfg.num_threads)
            datamodule, model = load_keypoint_data_and_model(cfg, keypoint_model_kwargs(cfg))
            size = float(model.image_size)
            record, curve = measure(model, datamodule, size, model.stride)
            runs.append({"variant": variant, "beta": float(cfg.keypoint.beta), "grid": args.grid, "seed": seed,
                         **record})
            name = label(variant, float(cfg.keypoint.beta))
            curves.setdefault(name, {"offset": [], "error": []})
            for key in ("offset", "error"):
                curves[name][key] += curve[key]
            console.print(f"{name} seed {seed}: NME {record['nme']:.4f}, shrink {record['shrink_x']:.3f} / "
                          f"{record['shrink_y']:.3f}, pull removed {record['nme_pull_removed']:.4f} "
                          f"({record['cut']:.1%} cut)")
    keys = ("nme", "nme_pull_removed", "cut", "shrink_x", "shrink_y", "border_nme", "border_nme_pull_removed")
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

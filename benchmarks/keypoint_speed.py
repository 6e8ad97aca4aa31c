"""FP32 inference speed of the keypoint model at 64x64 on this machine: images per second at
batch 1 and 32, per grid, logit kind and thread count (random weights: speed does not depend on
them). The compensation adds a handful of element-wise ops on [B, K, G] tensors.

    python benchmarks/keypoint_speed.py                      # grids 8 16, threads 1 2
    python benchmarks/keypoint_speed.py --threads 1 --seconds 5

Writes JSON and a markdown table to ``--out`` (a folder). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console

from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write_json
from lightning_ptq.keypoints import KeypointNet
from lightning_ptq.keypoints.synthetic import KEYPOINT_NAMES

VARIANTS = ("plain", "cosine_comp")


def images_per_second(model: torch.nn.Module, batch: int, image_size: int, seconds: float) -> float:
    """Throughput of ``model`` on random images after a warm-up, at the current thread count."""
    x = torch.rand(batch, 3, image_size, image_size)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--grids", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    args = parser.parse_args()
    rows = []
    for grid in args.grids:
        for variant in VARIANTS:
            cfg = compose_config(["+recipe=keypoint_w4a4", f"keypoint={variant}", f"keypoint.grid={grid}"])
            kwargs = {**OmegaConf.to_container(cfg.model.kwargs), **OmegaConf.to_container(cfg.keypoint)}
            model = KeypointNet(len(KEYPOINT_NAMES), image_size=cfg.data.image_size, **kwargs).eval()
            for threads in args.threads:
                torch.set_num_threads(threads)
                rows.append({"grid": grid, "variant": variant, "threads": threads,
                             "params": sum(p.numel() for p in model.parameters()),
                             **{f"batch{b}": images_per_second(model, b, cfg.data.image_size, args.seconds)
                                for b in (1, 32)}})
    table = ["| grid | variant | threads | parameters | images/s, batch 1 | images/s, batch 32 |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['grid']}x{r['grid']} | {r['variant']} | {r['threads']} | {r['params']:,} | {r['batch1']:.0f} | "
              f"{r['batch32']:.0f} |" for r in rows]
    out = Path(args.out)
    atomic_write_json({"rows": rows, "torch": torch.__version__, "cpu_count": os.cpu_count()},
                      out / "keypoint_speed.json")
    (out / "keypoint_speed.md").write_text("\n".join(table) + "\n")
    Console().print("\n".join(table))


if __name__ == "__main__":
    main()

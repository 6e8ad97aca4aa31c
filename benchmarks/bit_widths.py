"""Bit widths x calibration settings on the default detector, side by side in one process.

Every row starts from the same FP checkpoint, the same calibration images and the same test split.

    python benchmarks/bit_widths.py                       # W8A8, W4A8, W4A4 x four calibrations
    python benchmarks/bit_widths.py calib.steps=400 --out benchmarks/results/bit_widths.json

Any Hydra override of the main job's config is accepted (``data.*``, ``model.*``, ``calib.*``).
Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json

import lightning as L
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from lightning_ptq.detection import eval_kwargs, load_data_and_model
from lightning_ptq.pipeline import calibration_batches, quantize_and_calibrate
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.io import atomic_write_json
from lightning_ptq.detection import evaluate_detections
from lightning_ptq.quant import QuantConfig

BITS = [(8, 8), (4, 8), (4, 4)]
# name -> (quant overrides, learn scales?)
METHODS = {
    "minmax": ({"w_init": "minmax", "a_init": "minmax"}, False),
    "percentile": ({"w_init": "percentile", "a_init": "percentile"}, False),
    "mse": ({"w_init": "mse", "a_init": "mse"}, False),
    "mse + learned scales (output MSE)": ({"w_init": "mse", "a_init": "mse"}, True),
    "mse-w / percentile-a + learned (default)": ({"w_init": "mse", "a_init": "percentile"}, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/bit_widths.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. calib.steps=400")
    args = parser.parse_args()
    cfg = compose_config(["logger=none", *args.overrides])
    L.seed_everything(cfg.seed, verbose=False)

    datamodule, fp_model = load_data_and_model(cfg)
    fp = evaluate_detections(fp_model, datamodule.test_dataloader(), **eval_kwargs(cfg))
    batches = calibration_batches(datamodule, cfg.calib.num_images)
    rows = []
    for w_bits, a_bits in BITS:
        for name, (quant_overrides, learn) in METHODS.items():
            qcfg = QuantConfig.from_dict({**OmegaConf.to_container(cfg.quant), **quant_overrides,
                                          "w_bits": w_bits, "a_bits": a_bits})
            calib = OmegaConf.merge(cfg.calib, {"steps": cfg.calib.steps if learn else 0})
            qmodel, seconds = quantize_and_calibrate(fp_model, qcfg, batches, calib, cfg.trainer)
            m = evaluate_detections(qmodel, datamodule.test_dataloader(), **eval_kwargs(cfg))
            rows.append({"bits": f"W{w_bits}A{a_bits}", "method": name, **{k: float(v) for k, v in m.items()},
                         "retention": float(m["map"] / fp["map"]), "calib_seconds": seconds})
            Console().print(f"{rows[-1]['bits']} {name}: mAP {m['map']:.4f} ({rows[-1]['retention']:.1%} of FP)")

    report = {"fp": {k: float(v) for k, v in fp.items()}, "rows": rows,
              "calib_images": sum(len(b[0]) for b in batches), "calib_steps": cfg.calib.steps,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    atomic_write_json(report, args.out)
    table = Table(title=f"Default detector, test split (FP32 mAP {fp['map']:.4f}, mAP50 {fp['map50']:.4f})")
    for col in ("bits", "method", "mAP", "mAP50", "mAP75", "retention", "calib s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["bits"], r["method"], f"{r['map']:.4f}", f"{r['map50']:.4f}", f"{r['map75']:.4f}",
                      f"{r['retention']:.1%}", f"{r['calib_seconds']:.1f}")
    Console().print(table)
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()

"""Benchmarks as data: a benchmark is a config (``conf/benchmark/<name>.yaml``) whose Hydra sweep
runs each recipe / method / seed as one job of the main job, one after the other in one process:

    python -m lightning_ptq -m +benchmark=headline

This module turns the sweep's run folders into ``<out>.json`` (every run, the summary, the
command), ``<out>.md`` (the table) and ``<out>.png`` (quantized / FP metric per group). Runs are
grouped by every override that differs between them except the seed, and summarised as the
mean and sample standard deviation over seeds. The benchmark configs call it when the sweep
ends (the :class:`Collect` Hydra callback); to collect again, or a sweep that was stopped:

    python -m lightning_ptq.collect benchmarks/runs/headline/<date> --out benchmarks/results/headline
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from pathlib import Path

import matplotlib
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .core.io import atomic_write, atomic_write_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

# Overrides that never name a group: the seed varies within one, the benchmark is every run's.
UNGROUPED = ("seed", "+benchmark")
# Besides the optimised metric: how long calibration took and its peak memory.
COST_KEYS = ("calib_seconds", "calib_peak_rss_mib")


class NoRunsError(FileNotFoundError):
    """The sweep folder holds no finished run (no ``*/results.json``)."""


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def read_runs(sweep_dir: Path) -> list[dict]:
    """Every finished run under ``sweep_dir``: its overrides, config and results."""
    runs = []
    for results in sorted(Path(sweep_dir).glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        hydra_dir = results.parent / ".hydra"
        cfg = OmegaConf.load(hydra_dir / "config.yaml")
        runs.append({
            "dir": results.parent.name,
            "overrides": list(OmegaConf.load(hydra_dir / "overrides.yaml")),
            "seed": cfg.seed,
            "metric": cfg.optimized_metric,
            "method_label": OmegaConf.select(cfg, "method_label"),
            "results": json.loads(results.read_text()),
        })
    if not runs:
        raise NoRunsError(f"{sweep_dir} holds no finished run (no */results.json): give the folder of a "
                          f"sweep (python -m lightning_ptq -m +benchmark=...), e.g. benchmarks/runs/<name>/<date>.")
    return runs


def varied_keys(runs: list[dict]) -> list[str]:
    """The override keys whose value differs between runs (the seed aside), in first-seen order."""
    values: dict[str, set] = {}
    for run in runs:
        for override in run["overrides"]:
            values.setdefault(_key(override), set()).add(override)
    return [k for k, v in values.items() if k not in UNGROUPED and (len(v) > 1 or any(
        k not in {_key(o) for o in run["overrides"]} for run in runs))]


def _group_value(run: dict, key: str) -> str:
    value = next((o.split("=", 1)[1] for o in run["overrides"] if _key(o) == key), "-")
    if key == "+method" and run["method_label"]:
        return run["method_label"]
    return value


def _ratio(run: dict) -> float:
    """The quantized metric over the FP one (retention for mAP / accuracy, the error ratio for NME)."""
    metric = run["metric"]
    fp = run["results"].get(metric.replace("quant.", "fp.", 1))
    return run["results"][metric] / fp if fp else float("nan")


def _mean_std(samples: list[float]) -> tuple[float, float]:
    if any(math.isnan(s) for s in samples):  # e.g. a ratio to an FP metric of 0
        return math.nan, math.nan
    return statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0


def summarise(runs: list[dict], columns: list[str]) -> tuple[list[str], list[dict]]:
    """(the varied keys, one row per group): per group the seeds, the metric, the FP metric, their
    ratio and ``columns`` / :data:`COST_KEYS` results, each as mean and std over seeds."""
    keys = varied_keys(runs)
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(_group_value(run, k) for k in keys), []).append(run)
    rows = []
    for values, items in groups.items():
        metric = items[0]["metric"]
        row = {"group": dict(zip(keys, values)), "metric": metric, "seeds": sorted(r["seed"] for r in items)}
        wanted = {"value": metric, "fp": metric.replace("quant.", "fp.", 1), **{c: c for c in (*columns, *COST_KEYS)}}
        for name, result_key in wanted.items():
            samples = [r["results"][result_key] for r in items if isinstance(r["results"].get(result_key), (int, float))]
            if samples:
                row[name], row[f"{name}_std"] = _mean_std([float(s) for s in samples])
        row["ratio"], row["ratio_std"] = _mean_std([_ratio(r) for r in items])
        rows.append(row)
    return keys, rows


def markdown(keys: list[str], rows: list[dict], columns: list[str], command: str) -> str:
    pm = lambda row, k, f: f"{row[k]:{f}} ± {row[k + '_std']:{f}}" if k in row else "-"  # noqa: E731
    head = [k.lstrip("+") for k in keys] + ["metric", "quantized", "FP", "quantized / FP", *columns,
                                             "calib s", "peak RSS MiB", "seeds"]
    lines = [f"`{command}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["group"][k] for k in keys] + [
            row["metric"], pm(row, "value", ".4f"), f"{row['fp']:.4f}" if "fp" in row else "-", pm(row, "ratio", ".3f"),
            *(pm(row, c, ".4g") for c in columns),
            f"{row['calib_seconds']:.0f}" if "calib_seconds" in row else "-",
            f"{row['calib_peak_rss_mib']:.0f}" if "calib_peak_rss_mib" in row else "-", str(len(row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(keys: list[str], rows: list[dict], path: Path) -> None:
    labels = [" · ".join(row["group"][k] for k in keys) or row["metric"] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    ax.barh(labels, [row["ratio"] for row in rows], xerr=[row["ratio_std"] for row in rows], color="tab:blue")
    ax.axvline(1.0, color="grey", lw=1)
    ax.set_xlabel("quantized / FP (mean ± std over seeds)")
    ax.invert_yaxis()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def collect(sweep_dir: str | Path, out: str | Path, columns: list[str] = (), command: str = "") -> list[dict]:
    """Write ``out``.json / .md / .png from the runs of ``sweep_dir`` (see the module docstring);
    returns the summary rows."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    runs = read_runs(sweep_dir)
    keys, rows = summarise(runs, list(columns))
    named = lambda suffix: out.with_name(out.name + suffix)  # noqa: E731 (out may hold a dot)
    atomic_write_json({"command": command, "sweep_dir": str(sweep_dir), "varied": keys, "summary": rows,
                       "runs": runs}, named(".json"))
    table = markdown(keys, rows, list(columns), command)
    atomic_write(named(".md"), lambda tmp: Path(tmp).write_text(table))
    plot(keys, rows, named(".png"))
    print(table)
    return rows


class Collect(Callback):
    """Hydra callback of the benchmark configs: collect the sweep into ``out`` when it ends."""

    def __init__(self, out: str, columns: list[str] | None = None) -> None:
        self.out, self.columns = out, list(columns or [])

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        overrides = " ".join(config.hydra.overrides.task)
        collect(config.hydra.sweep.dir, self.out, self.columns, f"python -m lightning_ptq -m {overrides}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a sweep's folder (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the .json / .md / .png written")
    parser.add_argument("--columns", nargs="*", default=[], help="more result keys to summarise, e.g. quant.map50")
    args = parser.parse_args()
    multirun = args.sweep_dir / "multirun.yaml"
    command = ""
    if multirun.is_file():
        command = "python -m lightning_ptq -m " + " ".join(OmegaConf.load(multirun).hydra.overrides.task)
    collect(args.sweep_dir, args.out, args.columns, command)


if __name__ == "__main__":
    main()

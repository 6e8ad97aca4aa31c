"""What the main job shows a person: the FP-vs-quantized table and a picture of detections."""
from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.table import Table  # noqa: E402

TABLE_ROWS = [
    ("mAP@[.5:.95]", "fp.map", "quant.map", "{:.4f}"),
    ("mAP50", "fp.map50", "quant.map50", "{:.4f}"),
    ("mAP75", "fp.map75", "quant.map75", "{:.4f}"),
    ("model size (KiB)", "fp.size_kib", "quant.size_kib", "{:.1f}"),
]


def comparison_table(results: dict, rows: list[tuple], title: str, caption: str) -> Table:
    """FP32 vs quantized: one line per ``(label, fp key, quantized key, format)`` of ``rows``
    present in ``results``."""
    bits = f"W{results['w_bits']}A{results['a_bits']}"
    table = Table(title=f"{title}: FP32 vs {bits} on the test split")
    for col in ("metric", "FP32", bits):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for label, fp_key, q_key, fmt in rows:
        if fp_key in results and q_key in results:
            table.add_row(label, fmt.format(results[fp_key]), fmt.format(results[q_key]))
    table.caption = caption
    return table


def comparison_rows(results: dict, rows: list[tuple]) -> tuple[list[str], list[list]]:
    """The same table as plain columns and rows (for W&B)."""
    return ["metric", "fp32", "quantized"], [[label, results[f], results[q]] for label, f, q, _ in rows
                                             if f in results and q in results]


def results_table(results: dict) -> Table:
    """The detector job's table, with retention and calibration time in the caption."""
    return comparison_table(results, TABLE_ROWS, "lightning_ptq", (
        f"retention (quant / FP mAP) {results['retention']:.1%} | calibration "
        f"{results['calib_seconds']:.1f} s | size ratio {results['size_ratio']:.1f}x"))


def table_rows(results: dict) -> tuple[list[str], list[list]]:
    return comparison_rows(results, TABLE_ROWS)


DEPLOYED = (("onnx", "onnxruntime"), ("openvino", "OpenVINO"), ("integer", "integer executor"))


def deploy_table(results: dict, metric: str, label: str) -> Table | None:
    """The exported model in each runtime against the simulation (``quant.<metric>``): the metric,
    its difference, the largest output difference, images/s and the speed-up over the same
    runtime's FP32; ``None`` when nothing was exported."""
    present = [(p, name) for p, name in DEPLOYED if f"{p}.{metric}" in results]
    if not present:
        return None
    table = Table(title=f"deployed vs simulation ({label}: {results[f'quant.{metric}']:.4f} simulated)")
    for col in ("runtime", label, "Δ vs sim", "max |Δ output|", "images/s", "× its FP32"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for prefix, name in present:
        speedup = results.get(f"{prefix}.speedup")
        table.add_row(name, f"{results[f'{prefix}.{metric}']:.4f}",
                      f"{results[f'{prefix}.{metric}'] - results[f'quant.{metric}']:+.4f}",
                      f"{results[f'{prefix}.max_abs_diff']:.3g}", f"{results[f'{prefix}.images_per_s']:.0f}",
                      "" if speedup is None else f"{speedup:.2f}x")
    return table


def mean_and_spread(runs: list[dict], by: tuple[str, ...], metrics: tuple[str, ...]) -> list[dict]:
    """Benchmark runs grouped by the keys ``by`` (in first-seen order): per group its keys, the run
    count ``n`` and, per metric, the mean and the sample standard deviation (``<metric>_std``; 0
    for one run)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run[key] for key in by), []).append(run)
    rows = []
    for values, items in groups.items():
        row = {**dict(zip(by, values)), "n": len(items)}
        for metric in metrics:
            samples = [r[metric] for r in items]
            row[metric] = statistics.fmean(samples)
            row[f"{metric}_std"] = statistics.stdev(samples) if len(samples) > 1 else 0.0
        rows.append(row)
    return rows


def plot_detections(
    images: torch.Tensor,
    fp_dets: list[dict],
    q_dets: list[dict],
    class_names: list[str],
    path: str | Path,
    score_thr: float = 0.3,
    title: str = "quantized",
) -> Path:
    """Grid of test images: FP32 detections on the top row, quantized below.

    ``images``: [N, 3, H, W] in [0, 1]; detections: dicts with ``boxes`` (xyxy pixels),
    ``scores``, ``labels``.
    """
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(3 * n, 6.4), squeeze=False)
    for row, (dets, name) in enumerate(((fp_dets, "FP32"), (q_dets, title))):
        for col in range(n):
            ax = axes[row][col]
            ax.imshow(images[col].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
            d = dets[col]
            keep = d["scores"] >= score_thr
            for box, score, label in zip(d["boxes"][keep], d["scores"][keep], d["labels"][keep]):
                x0, y0, x1, y1 = box.tolist()
                color = plt.cm.tab10(int(label) % 10)
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1.2))
                ax.text(x0, y0 - 1, f"{class_names[int(label)]} {score:.2f}", color=color, fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

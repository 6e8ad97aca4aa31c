"""The search report: a per-layer table (sensitivity, chosen parameters, bits) and a bar chart of
the sensitivity per layer."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ..core.io import atomic_write_json  # noqa: E402
from .layerwise import SearchResult  # noqa: E402
from .params import save_layer_params  # noqa: E402

COLUMNS = ["layer", "sensitivity", "target", "first", "chosen", "w_bits", "a_bits", "metric_after", "tries"]


def _bits(b: int | None) -> str:
    return "float" if b is None else str(b)


def layer_rows(result: SearchResult) -> tuple[list[str], list[list]]:
    """Columns and rows of the per-layer table (for W&B and the console)."""
    rows = [[r.name, round(r.sensitivity, 5), r.target, r.first, r.chosen, _bits(r.w_bits), _bits(r.a_bits),
             None if r.metric_after is None else round(r.metric_after, 5), r.tries] for r in result.layers]
    return COLUMNS, rows


def layer_table(result: SearchResult, metric: str = "metric") -> Table:
    bits = result.average_bits()
    table = Table(title=f"Per-layer search ({metric}: float {result.fp_metric:.4f}, start {result.start_metric:.4f}, "
                        f"searched {result.final_metric:.4f}, goal {result.goal:.4f})",
                  caption=f"average bits: weights {bits['avg_w_bits']:.2f}, activations {bits['avg_a_bits']:.2f}; "
                          f"evaluations: {result.evaluations}")
    longest = max((len(r.name) for r in result.layers), default=5)
    for c in COLUMNS:
        if c == "layer":  # whole names, folded onto more lines rather than cut when the console is narrow
            table.add_column(c, justify="left", overflow="fold", min_width=min(longest, 48))
        else:
            table.add_column(c, justify="left" if c in ("first", "chosen") else "right")
    for row in layer_rows(result)[1]:
        table.add_row(*("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return table


def plot_sensitivity(result: SearchResult, path: str | Path, threshold: float, metric: str = "metric") -> Path:
    """Horizontal bars: each layer's metric drop when quantized alone, targets highlighted, the
    threshold as a line and the chosen bits as a label."""
    layers = result.layers
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(layers) + 1.5))
    y = range(len(layers))
    colours = ["tab:red" if r.target else "tab:blue" for r in layers]
    ax.barh(list(y), [r.sensitivity for r in layers], color=colours)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for i, r in enumerate(layers):
        if r.target:
            ax.text(max(r.sensitivity, 0), i, f"  W{_bits(r.w_bits)}A{_bits(r.a_bits)} {r.chosen}", va="center",
                    fontsize=7)
    ax.set_yticks(list(y), [r.name for r in layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} drop with only this layer quantized")
    ax.set_title("Per-layer sensitivity (red: searched targets)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_summary_table(results: dict, metric: str) -> Table:
    """Validation and test metric of the float model, the calibrated model (first parameters)
    and the searched one, side by side; the gap between the two columns is what the search
    fitted to its validation set."""
    table = Table(title=f"Search: {metric} on validation (searched on) and test (never seen)",
                  caption=f"{results['search.evaluations']} evaluations, {results['search.minutes']:.1f} min; "
                          f"average bits: weights {results['search.avg_w_bits']:.2f}, activations "
                          f"{results['search.avg_a_bits']:.2f}; goal reached: {results['search.reached']}")
    for c in ("model", "validation", "test"):
        table.add_column(c, justify="left" if c == "model" else "right")
    for name, val, test in (("float", results["search.val_fp"], results["search.test_fp"]),
                            ("calibrated (first parameters)", results["search.val_start"], results["search.test_start"]),
                            ("searched", results["search.val_final"], results["search.test_final"])):
        table.add_row(name, f"{val:.4f}", f"{test:.4f}")
    return table


def write_search_report(result: SearchResult, model, out_dir: str | Path, threshold: float, metric: str,
                        logger=None) -> None:
    """Write ``layer_params.json``, ``search.json`` and ``sensitivity.png`` to ``out_dir``, print
    the per-layer table and, with a logger that has ``log_table`` / ``log_image`` (W&B), log both."""
    out_dir = Path(out_dir)
    save_layer_params(model, out_dir / "layer_params.json", result.float_layers)
    atomic_write_json(result.to_dict(), out_dir / "search.json")
    plot = plot_sensitivity(result, out_dir / "sensitivity.png", threshold, metric)
    Console().print(layer_table(result, metric))
    if logger is not None and hasattr(logger, "log_table") and hasattr(logger, "log_image"):
        columns, rows = layer_rows(result)
        logger.log_table(key="layerwise_search", columns=columns, data=rows)
        logger.log_image(key="sensitivity", images=[str(plot)])

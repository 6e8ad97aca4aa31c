"""What the keypoint job shows a person: the FP-vs-quantized table and a picture of the points."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.table import Table  # noqa: E402

from ..report import comparison_rows, comparison_table  # noqa: E402

KEYPOINT_ROWS = [
    ("NME (lower is better)", "fp.nme", "quant.nme", "{:.4f}"),
    ("PCK@0.05", "fp.pck", "quant.pck", "{:.4f}"),
    ("OKS AP", "fp.oks_ap", "quant.oks_ap", "{:.4f}"),
    ("OKS AP50", "fp.oks_ap50", "quant.oks_ap50", "{:.4f}"),
    ("model size (KiB)", "fp.size_kib", "quant.size_kib", "{:.1f}"),
]


def keypoint_results_table(results: dict) -> Table:
    """FP32 vs quantized keypoint metrics, with the NME ratio and calibration time in the caption."""
    return comparison_table(results, KEYPOINT_ROWS, "lightning_ptq keypoints", (
        f"NME quantized / FP {results['nme_ratio']:.3f} | calibration {results['calib_seconds']:.1f} s"
        f" | size ratio {results['size_ratio']:.1f}x"))


def keypoint_table_rows(results: dict) -> tuple[list[str], list[list]]:
    return comparison_rows(results, KEYPOINT_ROWS)


def plot_keypoints(images: torch.Tensor, truth: torch.Tensor, fp: torch.Tensor, quant: torch.Tensor,
                   path: str | Path, title: str = "quantized") -> Path:
    """Test crops with the annotated points (circles) and the predictions (crosses): FP32 on the
    top row, quantized below. Points are [N, K, 2] in crop pixels."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    colours = plt.cm.tab10(torch.arange(truth.shape[1]) % 10)
    for row, (pred, name) in enumerate(((fp, "FP32"), (quant, title))):
        for col in range(n):
            ax = axes[row][col]
            # imshow puts pixel i's centre at i; our coordinates put it at i + 0.5
            ax.imshow(images[col].permute(1, 2, 0).clamp(0, 1).cpu().numpy(),
                      extent=(0, images.shape[-1], images.shape[-2], 0))
            ax.scatter(*truth[col].T.cpu(), s=28, facecolors="none", edgecolors=colours, linewidths=1.0)
            ax.scatter(*pred[col].T.cpu(), s=22, c=colours, marker="x", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
    fig.suptitle("annotated (o) and predicted (x) keypoints", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

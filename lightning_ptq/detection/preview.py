"""Render a few dataset images with their boxes and class names to a PNG, to eyeball the data."""
from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def save_preview(dataset, path: str | os.PathLike, n: int = 8, columns: int = 4) -> Path:
    """Save a grid of the first ``n`` items of ``dataset`` to ``path`` (PNG) and return ``path``.

    ``dataset[i]`` must be ``(image float [3, S, S] in [0, 1], {"boxes": [N, 4] xyxy pixels,
    "labels": [N]})`` and ``dataset.class_names`` name the labels (e.g. CocoDetectionDataset)."""
    n = min(n, len(dataset))
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(3 * columns, 3 * rows), dpi=100)
    for index in range(n):
        image, target = dataset[index]
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            # imshow puts pixel i's centre at i, so pixel edges (box coordinates) sit at -0.5
            axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=1))
            axes.text(x0 - 0.5, y0 - 1.5, dataset.class_names[label], color="lime", fontsize=7,
                      backgroundcolor=(0, 0, 0, 0.5))
        axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)

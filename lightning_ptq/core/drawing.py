"""Drawing primitives of the synthetic default datasets (detection, keypoints, classification):
cluttered backgrounds, distractors, anti-aliased polygon masks, colours that stand out."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # shapes are rasterised at 4x and box-filtered down: anti-aliased edges


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise, optionally blended with a linear gradient and sine stripes: [S, S, 3]."""
    grid = int(rng.integers(2, 9))
    coarse = Image.fromarray(to_uint8(rng.random((grid, grid, 3))))
    image = np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / size
        t = (t - t.min()) / (t.max() - t.min())
        c0, c1 = rng.random(3), rng.random(3)
        image = 0.5 * image + 0.5 * (c0 + t[..., None] * (c1 - c0))
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 24)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        weight = rng.uniform(0.15, 0.4) * (0.5 + 0.5 * np.sin(phase))
        image = image * (1 - weight[..., None]) + rng.random(3) * weight[..., None]
    return image.astype(np.float32)


def draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, clutter: int) -> None:
    """Non-object clutter: polylines, open arcs, thin slivers and dots (none is a class shape)."""
    for _ in range(int(rng.integers(0, clutter + 1))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(4)
        if kind == 0:
            points = rng.uniform(0, size, (int(rng.integers(2, 4)), 2))
            draw.line([tuple(p) for p in points], fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:
            cx, cy, r = *rng.uniform(0, size, 2), rng.uniform(4, 20)
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200),
                     fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 2:
            length = rng.uniform(8, 30)
            sliver = unit_circle() * [length / 2, length * rng.uniform(0.05, 0.15)]
            points = rotate(sliver, rng.uniform(0, 2 * math.pi)) + rng.uniform(0, size, 2)
            draw.polygon([tuple(p) for p in points], fill=colour)
        else:
            cx, cy, r = *rng.uniform(0, size, 2), rng.uniform(1.0, 2.5)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


def unit_circle(vertices: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def rasterise(outer: np.ndarray, hole: np.ndarray | None, shift: float = 0.5) -> tuple[np.ndarray, tuple]:
    """Anti-aliased coverage of ``outer`` minus ``hole`` (pixel coords) over its bounding pixels:
    ``(alpha [h, w] float32 in [0, 1], (row slice, column slice) of the [S, S] image)``.

    ``shift=0`` draws exactly where the coordinates say (measured with Pillow 13: a disc's
    coverage centroid is within 0.002 px of its centre). The detection data (format 1) was made
    with ``shift=0.5`` supersampled pixels, which draws every shape 1/8 px up and to the left; it
    is kept as the default so that cached datasets stay byte-identical (their boxes are off by
    1/8 px, irrelevant to box mAP). Keypoint data, whose labels must be sub-pixel exact, uses 0."""
    x0, y0 = np.floor(outer.min(0)).astype(int)
    x1, y1 = np.ceil(outer.max(0)).astype(int)
    patch = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(patch)
    for polygon, fill in ((outer, 255), (hole, 0)):
        if polygon is not None:
            points = (polygon - [x0, y0]) * SUPERSAMPLE - shift
            draw.polygon([tuple(p) for p in points], fill=fill)
    alpha = np.asarray(patch.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    return alpha, (slice(y0, y1), slice(x0, x1))


def pick_colour(rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray, min_contrast: float) -> np.ndarray:
    """First of 8 random RGB colours far enough (RGB distance / sqrt(3)) from the mean of
    ``image`` [h, w, 3] weighted by ``alpha`` [h, w]; the farthest one when none is."""
    candidates = rng.random((8, 3)).astype(np.float32)
    under = (image * alpha[..., None]).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
    distance = np.linalg.norm(candidates - under, axis=1) / math.sqrt(3)
    good = np.flatnonzero(distance >= min_contrast)
    return candidates[good[0] if len(good) else distance.argmax()]

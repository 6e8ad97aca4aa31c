"""Deterministic synthetic shape-detection dataset in COCO format (the project's default data).

Every image shows a few filled shapes (the classes: circle, square, triangle, plus, ring, star)
in random colours, rotations, aspect ratios and sizes on a cluttered background, so the class is
the *shape*, never the colour. Layout written under ``root``::

    root/meta.json                            generator parameters and format version
    root/images/<split>/<index:06d>.png       RGB uint8, image_size x image_size
    root/annotations/instances_<split>.json   COCO detection annotations

COCO conventions: ``images[i].file_name`` is ``"<split>/<index:06d>.png"``, relative to
``root/images``; ``bbox`` is ``[x, y, w, h]`` in pixels (floats, top-left origin, pixel ``i``
covers ``[i, i + 1)``), tight around the whole drawn shape; ``area`` is the shape's pixel area;
category ids start at 1; image ids are unique across splits.

Each image has its own random stream derived from ``(seed, split name, index)``, so a dataset is
byte-identical for a given seed, splits never share an image, and the first ``n`` images of a
split do not depend on the split's size.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.drawing import background, draw_distractors, pick_colour, rasterise, rotate, to_uint8, unit_circle
from ..core.generated import write_generated_dataset

FORMAT_VERSION = 1
CLASS_NAMES = ("circle", "square", "triangle", "plus", "ring", "star")
DEFAULT_SPLITS = {"train": 2000, "calib": 256, "val": 256, "test": 256}
MAX_PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class Difficulty:
    """Difficulty knobs of the generated data (sizes in pixels of the ``image_size`` image).

    min_objects, max_objects: objects per image, drawn uniformly from this inclusive range (an
        object that finds no free place in 50 tries is dropped; rare with the defaults).
    min_size, max_size: longer side of an object's box, log-uniform in this range (many small).
    max_box_iou: largest IoU allowed between two objects' boxes.
    max_occlusion: largest fraction of an object's area that later objects may cover.
    clutter: distractors per image (lines, arcs, slivers, dots) drawn uniformly from 0..clutter.
    noise: standard deviation of the per-pixel Gaussian noise, in [0, 1] intensity units.
    min_contrast: wanted RGB distance (0..1) between an object and the background under it.
    """

    min_objects: int = 2
    max_objects: int = 8
    min_size: float = 8.0
    max_size: float = 56.0
    max_box_iou: float = 0.5
    max_occlusion: float = 0.4
    clutter: int = 6
    noise: float = 0.03
    min_contrast: float = 0.3

    def check(self, image_size: int) -> None:
        """Raise ``ValueError`` naming the first knob that is out of range."""
        rules = [
            (0 <= self.min_objects <= self.max_objects, "need 0 <= min_objects <= max_objects"),
            (2 <= self.min_size <= self.max_size <= image_size - 2,
             f"need 2 <= min_size <= max_size <= image_size - 2 = {image_size - 2}"),
            (0 < self.max_box_iou <= 1, "need 0 < max_box_iou <= 1"),
            (0 <= self.max_occlusion < 1, "need 0 <= max_occlusion < 1"),
            (self.clutter >= 0, "need clutter >= 0"),
            (self.noise >= 0, "need noise >= 0"),
            (0 <= self.min_contrast <= 1, "need 0 <= min_contrast <= 1"),
        ]
        for ok, rule in rules:
            if not ok:
                raise ValueError(f"Bad synthetic data knobs {asdict(self)}: {rule}.")


def generate_detection_dataset(
    root: str | os.PathLike,
    splits: dict[str, int] | None = None,
    image_size: int = 128,
    seed: int = 0,
    **knobs,
) -> Path:
    """Write the synthetic COCO dataset to ``root`` (see the module docstring) and return ``root``.

    ``splits`` maps split name to image count (default ``DEFAULT_SPLITS``); ``knobs`` are the
    fields of :class:`Difficulty`. Nothing is written when ``root`` already holds this dataset;
    otherwise it is written atomically, and a folder of someone else's files is refused
    (:func:`~lightning_ptq.core.generated.write_generated_dataset`).
    """
    unknown = sorted(set(knobs) - set(Difficulty.__dataclass_fields__))
    if unknown:
        raise TypeError(f"Unknown synthetic data knob(s) {unknown}; known: {sorted(Difficulty.__dataclass_fields__)}.")
    difficulty = Difficulty(**knobs)
    difficulty.check(image_size)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    meta = {"generator": "lightning_ptq.synthetic_detection", "version": FORMAT_VERSION,
            "splits": [[name, count] for name, count in splits.items()], "image_size": image_size, "seed": seed, "difficulty": asdict(difficulty)}
    return write_generated_dataset(root, meta, splits, lambda out, split, count, first_id: _write_split(
        out, split, count, first_id, image_size, seed, difficulty))


def _write_split(out: Path, split: str, count: int, first_id: int, image_size: int, seed: int,
                 difficulty: Difficulty) -> None:
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    split_key = zlib.crc32(split.encode())
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        pixels, objects = render_image(rng, image_size, difficulty)
        image_id = first_id + index
        name = f"{split}/{index:06d}.png"
        Image.fromarray(pixels).save(out / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
        for label, (x0, y0, x1, y1), area in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                "area": round(area, 3), "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)]
    coco = {"info": {"description": f"lightning_ptq synthetic shapes, split {split}", "version": str(FORMAT_VERSION)},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))


# ----------------------------------------------------------------------------------- rendering

def render_image(rng: np.random.Generator, image_size: int, difficulty: Difficulty):
    """One image: ``(pixels uint8 [S, S, 3], objects)`` with objects a list of
    ``(label 0..C-1, (x0, y0, x1, y1) box in pixels, pixel area)``."""
    canvas = Image.fromarray(to_uint8(background(rng, image_size)))
    draw_distractors(ImageDraw.Draw(canvas), rng, image_size, difficulty.clutter)
    image = np.asarray(canvas, dtype=np.float32) / 255.0
    objects, visible = [], []  # visible: per object, its coverage [S, S] not hidden by later ones
    count = rng.integers(difficulty.min_objects, difficulty.max_objects + 1)
    for _ in range(count):
        for _ in range(MAX_PLACEMENT_TRIES):
            label = int(rng.integers(len(CLASS_NAMES)))
            outer, hole = _shape_polygons(label, rng, difficulty, image_size)
            box = (*outer.min(0), *outer.max(0))
            if objects and _box_iou(box, np.array([o[1] for o in objects])).max() > difficulty.max_box_iou:
                continue
            alpha, region = rasterise(outer, hole)
            if any((v.sum() - (v[region] * alpha).sum()) < (1 - difficulty.max_occlusion) * o[2]
                   for v, o in zip(visible, objects)):
                continue
            colour = pick_colour(rng, image[region], alpha, difficulty.min_contrast)
            image[region] = image[region] * (1 - alpha[..., None]) + colour * alpha[..., None]
            for v in visible:
                v[region] *= 1 - alpha
            visible.append(np.zeros((image_size, image_size), dtype=np.float32))
            visible[-1][region] = alpha
            objects.append((label, tuple(float(c) for c in box), float(alpha.sum())))
            break
    image = image + rng.normal(0.0, difficulty.noise, image.shape).astype(np.float32)
    return to_uint8(image), objects


def _unit_shape(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline polygon [K, 2] of class ``label`` around the origin, and the ring's hole (else None)."""
    name = CLASS_NAMES[label]
    if name == "circle":
        return unit_circle(), None
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float), None
    if name == "triangle":
        return unit_circle(3), None
    if name == "plus":
        a = 0.33  # half-width of an arm
        return np.array([[a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                         [-1, a], [-1, -a], [-a, -a], [-a, -1]], dtype=float), None
    if name == "ring":
        return unit_circle(), unit_circle() * rng.uniform(0.45, 0.65)
    tips = unit_circle(10) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None]  # star
    return tips, None


def _shape_polygons(label: int, rng: np.random.Generator, difficulty: Difficulty, image_size: int):
    """Place a random shape inside the image: ``(outline [K, 2], hole [K, 2] or None)`` in pixels.

    The longer side of the outline's box is log-uniform in ``[min_size, max_size]``."""
    outer, hole = _unit_shape(label, rng)
    stretch = math.exp(rng.uniform(-math.log(1.25), math.log(1.25)))
    transform = np.diag([math.sqrt(stretch), 1 / math.sqrt(stretch)])
    transform = transform @ rotate(np.eye(2), rng.uniform(0, 2 * math.pi))
    outer = outer @ transform
    low, high = outer.min(0), outer.max(0)
    size = math.exp(rng.uniform(math.log(difficulty.min_size), math.log(difficulty.max_size)))
    scale = size / (high - low).max()
    extent = (high - low) * scale
    offset = rng.uniform(0, image_size - extent) - low * scale
    hole = None if hole is None else hole @ transform * scale + offset
    return outer * scale + offset, hole


def _box_iou(box: tuple, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``boxes`` [N, 4]."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)



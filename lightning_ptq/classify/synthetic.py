"""Deterministic synthetic shape-classification dataset in ImageFolder layout (the embedded
default of the classification benchmark).

Every image shows ONE filled shape, whose class is the label, on a cluttered, noisy background.
The ten classes come in confusable pairs and families at low resolution: circle / ellipse,
square / rectangle (the elongated ones are stretched by ``min_elongation..max_elongation``, the
others by at most ``max_stretch``), the polygons triangle / pentagon / hexagon (close to a circle
when small), star / plus, and ring (a circle with a hole). Each shape gets a random rotation,
size and place (fully inside the image) and a random colour with some contrast to the background
under it, so the class is the *shape*, never the colour. Distractors (lines, arcs, slivers and
dots, none a class shape) are drawn under the shape (``clutter``) and over it (``occluders``),
then per-pixel Gaussian noise is added. Layout written under ``root``::

    root/meta.json                          generator parameters and format version
    root/<split>/<class_name>/<id:06d>.png  RGB uint8, image_size x image_size

which ``torchvision.datasets.ImageFolder`` reads directly. :data:`CLASS_NAMES` is sorted, so a
class's index in it is ImageFolder's label. Every split has a folder for every class (possibly
empty for a split with fewer images than classes); labels are round-robin (image ``i`` of a split
has class ``i % 10``), so the classes are balanced. Image ids are unique across splits.

Like :mod:`lightning_ptq.detection.synthetic` each image has its own random stream derived
from ``(seed, split name, index)``, so a dataset is byte-identical for a given seed, splits never
share an image, and the first ``n`` images of a split do not depend on the split's size.
"""
from __future__ import annotations

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
CLASS_NAMES = ("circle", "ellipse", "hexagon", "pentagon", "plus", "rectangle", "ring", "square", "star",
               "triangle")  # sorted: the index is ImageFolder's label
ELONGATED = frozenset({"ellipse", "rectangle"})
DEFAULT_SPLITS = {"train": 10000, "pool": 2000, "test": 2000}


@dataclass(frozen=True)
class ClassDifficulty:
    """Difficulty knobs of the generated classification data.

    min_size, max_size: longer side of the shape's box as a fraction of the image side, uniform in
        this range.
    max_stretch: aspect ratio change of the non-elongated classes, log-uniform in
        [1 / max_stretch, max_stretch].
    min_elongation, max_elongation: aspect ratio of ellipses and rectangles, uniform in this range.
    clutter: distractors under the shape (lines, arcs, slivers, dots), uniform in 0..clutter.
    occluders: distractors over the shape, uniform in 0..occluders.
    noise: standard deviation of the per-pixel Gaussian noise, in [0, 1] intensity units.
    min_contrast: wanted RGB distance (0..1) between the shape and the background under it.
    """

    min_size: float = 0.35
    max_size: float = 0.8
    max_stretch: float = 1.15
    min_elongation: float = 1.35
    max_elongation: float = 2.0
    clutter: int = 4
    occluders: int = 1
    noise: float = 0.06
    min_contrast: float = 0.25

    def check(self, image_size: int) -> None:
        """Raise ``ValueError`` naming the first knob that is out of range."""
        rules = [
            (0 < self.min_size <= self.max_size <= 1,
             "need 0 < min_size <= max_size <= 1 (fractions of the image side)"),
            (self.min_size * image_size >= 4,
             f"need min_size * image_size >= 4 pixels, got {self.min_size} * {image_size}"),
            (self.max_stretch >= 1, "need max_stretch >= 1"),
            (self.max_stretch < self.min_elongation <= self.max_elongation,
             "need max_stretch < min_elongation <= max_elongation (else ellipses look like circles)"),
            (self.clutter >= 0, "need clutter >= 0"),
            (self.occluders >= 0, "need occluders >= 0"),
            (self.noise >= 0, "need noise >= 0"),
            (0 <= self.min_contrast <= 1, "need 0 <= min_contrast <= 1"),
        ]
        for ok, rule in rules:
            if not ok:
                raise ValueError(f"Bad synthetic classification data knobs {asdict(self)}: {rule}.")


def generate_classification_dataset(
    root: str | os.PathLike,
    splits: dict[str, int] | None = None,
    image_size: int = 32,
    seed: int = 0,
    **knobs,
) -> Path:
    """Write the synthetic ImageFolder dataset to ``root`` (see the module docstring) and return
    ``root``.

    ``splits`` maps split name to image count (default :data:`DEFAULT_SPLITS`); ``knobs`` are the
    fields of :class:`ClassDifficulty`. Nothing is written when ``root`` already holds this
    dataset; otherwise it is written atomically, and a folder of someone else's files is refused
    (:func:`~lightning_ptq.core.generated.write_generated_dataset`).
    """
    unknown = sorted(set(knobs) - set(ClassDifficulty.__dataclass_fields__))
    if unknown:
        raise TypeError(f"Unknown synthetic classification data knob(s) {unknown}; known: "
                        f"{sorted(ClassDifficulty.__dataclass_fields__)}.")
    if not (isinstance(image_size, int) and image_size >= 8):
        raise ValueError(f"image_size must be an int >= 8 (pixels), got {image_size!r}.")
    difficulty = ClassDifficulty(**knobs)
    difficulty.check(image_size)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    bad = {name: count for name, count in splits.items()
           if not (isinstance(count, int) and count >= 0) or not name or "/" in name or name.startswith(".")}
    if bad:
        raise ValueError(f"Bad splits {bad}: need {{name: image count >= 0}} with plain folder names.")
    meta = {"generator": "lightning_ptq.synthetic_classes", "version": FORMAT_VERSION,
            "splits": [[name, count] for name, count in splits.items()], "image_size": image_size, "seed": seed,
            "classes": list(CLASS_NAMES), "difficulty": asdict(difficulty)}
    return write_generated_dataset(root, meta, splits, lambda out, split, count, first_id: _write_split(
        out, split, count, first_id, image_size, seed, difficulty))


def _write_split(out: Path, split: str, count: int, first_id: int, image_size: int, seed: int,
                 difficulty: ClassDifficulty) -> None:
    for name in CLASS_NAMES:
        (out / split / name).mkdir(parents=True)
    split_key = zlib.crc32(split.encode())
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        label = index % len(CLASS_NAMES)
        pixels = render_class_image(rng, label, image_size, difficulty)
        Image.fromarray(pixels).save(out / split / CLASS_NAMES[label] / f"{first_id + index:06d}.png")


# ----------------------------------------------------------------------------------- rendering

def render_class_image(rng: np.random.Generator, label: int, image_size: int,
                       difficulty: ClassDifficulty) -> np.ndarray:
    """One image of class ``label`` (an index into :data:`CLASS_NAMES`): uint8 [S, S, 3]."""
    canvas = Image.fromarray(to_uint8(background(rng, image_size)))
    draw_distractors(ImageDraw.Draw(canvas), rng, image_size, difficulty.clutter)
    image = np.asarray(canvas, dtype=np.float32) / 255.0
    outer, hole = _class_polygons(label, rng, difficulty, image_size)
    alpha, region = rasterise(outer, hole, shift=0.0)
    colour = pick_colour(rng, image[region], alpha, difficulty.min_contrast)
    image[region] = image[region] * (1 - alpha[..., None]) + colour * alpha[..., None]
    if difficulty.occluders:
        canvas = Image.fromarray(to_uint8(image))
        draw_distractors(ImageDraw.Draw(canvas), rng, image_size, difficulty.occluders)
        image = np.asarray(canvas, dtype=np.float32) / 255.0
    image = image + rng.normal(0.0, difficulty.noise, image.shape).astype(np.float32)
    return to_uint8(image)


def _unit_class_shape(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline polygon [K, 2] of class ``label`` around the origin, and the ring's hole (else None)."""
    name = CLASS_NAMES[label]
    if name in ("circle", "ellipse"):
        return unit_circle(), None
    if name in ("square", "rectangle"):
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float), None
    if name in ("triangle", "pentagon", "hexagon"):
        return unit_circle({"triangle": 3, "pentagon": 5, "hexagon": 6}[name]), None
    if name == "plus":
        a = rng.uniform(0.25, 0.4)  # half-width of an arm
        return np.array([[a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                         [-1, a], [-1, -a], [-a, -a], [-a, -1]], dtype=float), None
    if name == "ring":
        return unit_circle(), unit_circle() * rng.uniform(0.45, 0.7)
    inner = rng.uniform(0.38, 0.55)  # star: 5 tips
    return unit_circle(10) * np.where(np.arange(10) % 2 == 0, 1.0, inner)[:, None], None


def _class_polygons(label: int, rng: np.random.Generator, difficulty: ClassDifficulty, image_size: int):
    """Place a random shape of class ``label`` inside the image: ``(outline [K, 2], hole [K, 2] or
    None)`` in pixels, the longer side of the outline's box ``min_size..max_size`` of the image."""
    outer, hole = _unit_class_shape(label, rng)
    if CLASS_NAMES[label] in ELONGATED:
        stretch = rng.uniform(difficulty.min_elongation, difficulty.max_elongation)
    else:
        stretch = math.exp(rng.uniform(-math.log(difficulty.max_stretch), math.log(difficulty.max_stretch)))
    transform = np.diag([math.sqrt(stretch), 1 / math.sqrt(stretch)])
    transform = transform @ rotate(np.eye(2), rng.uniform(0, 2 * math.pi))
    outer = outer @ transform
    low, high = outer.min(0), outer.max(0)
    size = rng.uniform(difficulty.min_size, difficulty.max_size) * image_size
    scale = size / (high - low).max()
    extent = (high - low) * scale
    offset = rng.uniform(0, image_size - extent) - low * scale
    hole = None if hole is None else hole @ transform * scale + offset
    return outer * scale + offset, hole

"""Deterministic synthetic keypoint dataset in COCO keypoints format (the embedded default).

Every image shows ONE articulated figure on a cluttered, noisy background, with the
``KEYPOINT_NAMES`` landmarks at sub-pixel positions:

* ``head``: the centre of the round head;
* ``neck``, ``hip``: the centres of two small discs of a second colour on the torso;
* ``left_hand``, ``right_hand``, ``left_foot``, ``right_foot``: the 90-degree tips of the four
  arrow-tipped limbs ("left" is the image left of the upright figure; left limbs are thinner and
  the left arm shorter, so the figure is asymmetric).

Limb angles and lengths, the head's tilt and the neck and hip positions are jittered per image
(the articulation), then the figure gets a random rotation, anisotropic stretch and shear (no
mirroring), a size and a place fully inside the image. Both colours are random per image, so
only shape and layout tell the landmarks apart. Parts are rasterised at 4x and box-filtered down,
so the anti-aliased pixels encode the sub-pixel landmark positions. Layout written under ``root``::

    root/meta.json                                   generator parameters and format version
    root/images/<split>/<index:06d>.png              RGB uint8, image_size x image_size
    root/annotations/person_keypoints_<split>.json   COCO keypoints annotations

COCO conventions: one category (id 1, ``"object"``) with ``keypoints`` (the names) and a 1-based
``skeleton``; one annotation per image, its id equal to the image id (unique across splits);
``keypoints`` is ``[x1, y1, v1, ...]`` in pixels (pixel ``i`` covers ``[i, i + 1)``, every
``v = 2``: labelled and visible), ``bbox`` is ``[x, y, w, h]`` tight around the drawn figure and
``area`` its pixel area. Like :mod:`lightning_ptq.detection.synthetic` each image has its own
random stream derived from ``(seed, split name, index)``, so a dataset is byte-identical for a
given seed and the first ``n`` images of a split do not depend on the split's size.
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

from ..core.drawing import background, draw_distractors, pick_colour, rasterise, to_uint8
from ..core.generated import write_generated_dataset

FORMAT_VERSION = 1
KEYPOINT_NAMES = ("head", "neck", "hip", "left_hand", "right_hand", "left_foot", "right_foot")
SKELETON = ((1, 2), (2, 3), (2, 4), (2, 5), (3, 6), (3, 7))  # 1-based pairs, as in COCO
DEFAULT_SPLITS = {"train": 4000, "calib": 256, "val": 256, "test": 512}


@dataclass(frozen=True)
class KeypointDifficulty:
    """Difficulty knobs of the generated keypoint data.

    min_size, max_size: longer side of the figure's box as a fraction of the image side, uniform
        in this range.
    max_rotation: the figure is rotated by an angle uniform in [-max_rotation, max_rotation] degrees.
    max_stretch: aspect ratio change, log-uniform in [1 / max_stretch, max_stretch].
    max_shear: horizontal shear factor, uniform in [-max_shear, max_shear].
    articulation: scales the per-image jitter of limb angles and lengths, head tilt and neck and
        hip positions; 0 gives a rigid figure (only the global pose varies), 1 the default poses.
    clutter: distractors per image (lines, arcs, slivers, dots) drawn uniformly from 0..clutter.
    noise: standard deviation of the per-pixel Gaussian noise, in [0, 1] intensity units.
    min_contrast: wanted RGB distance (0..1) of the figure from the background under it, and of
        the neck and hip discs from the figure.
    """

    min_size: float = 0.4
    max_size: float = 0.85
    max_rotation: float = 60.0
    max_stretch: float = 1.3
    max_shear: float = 0.25
    articulation: float = 1.0
    clutter: int = 6
    noise: float = 0.03
    min_contrast: float = 0.3

    def check(self, image_size: int) -> None:
        """Raise ``ValueError`` naming the first knob that is out of range."""
        rules = [
            (0 < self.min_size <= self.max_size <= 1,
             "need 0 < min_size <= max_size <= 1 (fractions of the image side)"),
            (self.min_size * image_size >= 8,
             f"need min_size * image_size >= 8 pixels, got {self.min_size} * {image_size}"),
            (0 <= self.max_rotation <= 180, "need 0 <= max_rotation <= 180 (degrees)"),
            (self.max_stretch >= 1, "need max_stretch >= 1"),
            (0 <= self.max_shear <= 1, "need 0 <= max_shear <= 1"),
            (0 <= self.articulation <= 1, "need 0 <= articulation <= 1"),
            (self.clutter >= 0, "need clutter >= 0"),
            (self.noise >= 0, "need noise >= 0"),
            (0 <= self.min_contrast <= 1, "need 0 <= min_contrast <= 1"),
        ]
        for ok, rule in rules:
            if not ok:
                raise ValueError(f"Bad synthetic keypoint data knobs {asdict(self)}: {rule}.")


def generate_keypoint_dataset(
    root: str | os.PathLike,
    splits: dict[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
    **knobs,
) -> Path:
    """Write the synthetic COCO keypoints dataset to ``root`` (see the module docstring) and
    return ``root``.

    ``splits`` maps split name to image count (default ``DEFAULT_SPLITS``); ``knobs`` are the
    fields of :class:`KeypointDifficulty`. Nothing is written when ``root`` already holds this dataset;
    otherwise it is written atomically, and a folder of someone else's files is refused
    (:func:`~lightning_ptq.core.generated.write_generated_dataset`).
    """
    unknown = sorted(set(knobs) - set(KeypointDifficulty.__dataclass_fields__))
    if unknown:
        raise TypeError(f"Unknown synthetic keypoint data knob(s) {unknown}; known: "
                        f"{sorted(KeypointDifficulty.__dataclass_fields__)}.")
    difficulty = KeypointDifficulty(**knobs)
    difficulty.check(image_size)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    meta = {"generator": "lightning_ptq.synthetic_keypoints", "version": FORMAT_VERSION,
            "splits": [[name, count] for name, count in splits.items()], "image_size": image_size, "seed": seed,
            "difficulty": asdict(difficulty)}
    return write_generated_dataset(root, meta, splits, lambda out, split, count, first_id: _write_split(
        out, split, count, first_id, image_size, seed, difficulty))


def _write_split(out: Path, split: str, count: int, first_id: int, image_size: int, seed: int,
                 difficulty: KeypointDifficulty) -> None:
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    split_key = zlib.crc32(split.encode())
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        pixels, keypoints, (x0, y0, x1, y1), area = render_keypoint_image(rng, image_size, difficulty)
        image_id = first_id + index
        name = f"{split}/{index:06d}.png"
        Image.fromarray(pixels).save(out / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
        annotations.append({
            "id": image_id, "image_id": image_id, "category_id": 1,
            "keypoints": [v for x, y in keypoints for v in (round(float(x), 3), round(float(y), 3), 2)],
            "num_keypoints": len(KEYPOINT_NAMES),
            "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
            "area": round(area, 3), "iscrowd": 0,
        })
    categories = [{"id": 1, "name": "object", "supercategory": "object", "keypoints": list(KEYPOINT_NAMES),
                   "skeleton": [list(pair) for pair in SKELETON]}]
    info = {"description": f"lightning_ptq synthetic keypoints, split {split}", "version": str(FORMAT_VERSION)}
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))


# ----------------------------------------------------------------------------------- rendering

def render_keypoint_image(rng: np.random.Generator, image_size: int, difficulty: KeypointDifficulty):
    """One image: ``(pixels uint8 [S, S, 3], keypoints float64 [K, 2] pixels, (x0, y0, x1, y1)
    box of the figure in pixels, pixel area of the figure)``."""
    canvas = Image.fromarray(to_uint8(background(rng, image_size)))
    draw_distractors(ImageDraw.Draw(canvas), rng, image_size, difficulty.clutter)
    image = np.asarray(canvas, dtype=np.float32) / 255.0
    parts, discs, keypoints = figure(rng, difficulty, image_size)
    body, marks = _coverage(parts, image_size), _coverage(discs, image_size)
    colour = pick_colour(rng, image, body, difficulty.min_contrast)
    image = image * (1 - body[..., None]) + colour * body[..., None]
    disc_colour = pick_colour(rng, np.broadcast_to(colour, (1, 1, 3)), np.ones((1, 1), np.float32),
                               difficulty.min_contrast)
    image = image * (1 - marks[..., None]) + disc_colour * marks[..., None]
    image = image + rng.normal(0.0, difficulty.noise, image.shape).astype(np.float32)
    points = np.concatenate(parts + discs)
    box = (*(float(v) for v in points.min(0)), *(float(v) for v in points.max(0)))
    return to_uint8(image), keypoints, box, float(np.maximum(body, marks).sum())


def _coverage(polygons: list[np.ndarray], image_size: int) -> np.ndarray:
    """Anti-aliased coverage [S, S] of the union of ``polygons`` (per pixel, the largest coverage
    of one polygon: exact except where two edges cross inside a pixel, never at a landmark)."""
    cover = np.zeros((image_size, image_size), dtype=np.float32)
    for polygon in polygons:
        alpha, region = rasterise(polygon, None, shift=0.0)  # sub-pixel exact
        cover[region] = np.maximum(cover[region], alpha)
    return cover


def _disc(centre: np.ndarray, radius: float, vertices: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    return centre + radius * np.stack([np.cos(t), np.sin(t)], 1)


def _limb(root: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """A bar of ``width`` from ``root`` along ``angle`` (radians, y down) ending in a 90-degree
    tip at distance ``length`` from ``root``: pentagon [5, 2], the tip last."""
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-along[1], along[0]]) * width / 2
    shoulder = root + (length - width / 2) * along
    return np.stack([shoulder - across, root - across, root + across, shoulder + across, root + length * along])


def figure(rng: np.random.Generator, difficulty: KeypointDifficulty, image_size: int):
    """A random pose of the figure placed inside the image: ``(parts, discs, keypoints [K, 2])``
    in pixels; ``parts`` are the polygons drawn in the figure's colour (torso, head, limbs),
    ``discs`` the neck and hip discs drawn in the second colour."""
    def jitter(amount: float) -> float:
        return rng.uniform(-amount, amount) * difficulty.articulation

    # the upright figure in body units (about 2.3 tall), y down, "left" = image left
    neck = np.array([jitter(0.05), -0.45 + jitter(0.05)])
    hip = np.array([jitter(0.08), 0.35 + jitter(0.05)])
    tilt = math.radians(jitter(20.0))
    head = neck + 0.42 * np.array([math.sin(tilt), -math.cos(tilt)])
    torso = np.stack([neck + [-0.3, -0.02], neck + [0.34, -0.02], hip + [0.26, 0.1], hip + [-0.2, 0.1]])
    limbs = [  # (root, angle in degrees from the +x axis, length, width), in KEYPOINT_NAMES order
        (neck + [-0.2, 0.06], 160 + jitter(50.0), 0.65 + jitter(0.12), 0.13),  # left arm
        (neck + [0.22, 0.06], 20 + jitter(50.0), 0.8 + jitter(0.15), 0.2),  # right arm
        (hip + [-0.12, 0.0], 110 + jitter(20.0), 0.85 + jitter(0.12), 0.15),  # left leg
        (hip + [0.14, 0.0], 70 + jitter(20.0), 0.85 + jitter(0.12), 0.22),  # right leg
    ]
    parts = [torso, _disc(head, 0.24)] + [_limb(root, math.radians(degrees), length, width)
                                          for root, degrees, length, width in limbs]
    discs = [_disc(neck, 0.12, 16), _disc(hip, 0.12, 16)]
    keypoints = np.stack([head, neck, hip] + [limb[-1] for limb in parts[2:]])

    # global pose: stretch, shear, rotation (determinant > 0: never mirrored)
    stretch = math.exp(rng.uniform(-math.log(difficulty.max_stretch), math.log(difficulty.max_stretch)))
    shear = rng.uniform(-difficulty.max_shear, difficulty.max_shear)
    angle = math.radians(rng.uniform(-difficulty.max_rotation, difficulty.max_rotation))
    c, s = math.cos(angle), math.sin(angle)
    pose = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]])
    pose = pose @ np.diag([math.sqrt(stretch), 1 / math.sqrt(stretch)])
    everything = np.concatenate(parts + discs) @ pose.T
    low, high = everything.min(0), everything.max(0)
    size = rng.uniform(difficulty.min_size, difficulty.max_size) * image_size
    scale = size / (high - low).max()
    offset = rng.uniform(0, image_size - (high - low) * scale) - low * scale

    def place(points: np.ndarray) -> np.ndarray:  # clip: float rounding must not leave the image
        return np.clip(points @ pose.T * scale + offset, 0.0, float(image_size))

    return [place(p) for p in parts], [place(d) for d in discs], place(keypoints)

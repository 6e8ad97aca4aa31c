"""COCO-format keypoint data, top-down: one crop per annotated object, a collate function and a
Lightning data module.

Works with any folder in COCO keypoints format (the user's data, and the generated default of
:mod:`lightning_ptq.keypoints.synthetic`), read through ``pycocotools``::

    <root>/annotations/person_keypoints_<split>.json   (``ann_file`` pattern)
    <root>/images/<file_name from the json>            (``image_dir``, may contain ``{split}``)

The file needs exactly one category with a ``keypoints`` list of names (K of them); its
non-crowd annotations with labelled keypoints are the samples. Each sample is the square of side
``crop_margin x max(w, h)`` centred on the annotation's ``bbox``, resized to ``image_size`` with
an antialiased bilinear filter (pixels outside the image are zero). Coordinates are continuous
pixels, pixel ``i`` covering ``[i, i + 1)``, and ``original = crop * scale + (x0, y0)``.

Clipping: labelled keypoints outside their image are clipped into it, and labelled keypoints
outside their crop (beyond the box and its margin) are clipped into ``[0, image_size]``; both are
counted in ``dataset.clipped`` and reported once as a warning.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..core.coco_folders import (
    AnnotationFileNotFoundError, EmptySplitError, MalformedAnnotationError, SplitFoldersDataModule,
    load_coco, split_image_ids,
)
from ..core.images import read_rgb
from .synthetic import generate_keypoint_dataset

log = logging.getLogger(__name__)


def load_coco_keypoints(ann_file: str | os.PathLike) -> tuple[COCO, dict]:
    """Read and validate a COCO keypoints json: ``(COCO index, the keypoint category)``.

    On top of :func:`~lightning_ptq.detection.load_coco`'s checks, raises
    :class:`~lightning_ptq.detection.MalformedAnnotationError` naming the file, the annotation id and
    what is allowed when the keypoints are unusable. Annotations of the keypoint category that
    lack ``keypoints`` get K unlabelled ones, a missing ``num_keypoints`` is counted from the
    flags and a missing ``area`` is the box area (COCOeval needs all three)."""
    ann_file = Path(ann_file)
    coco = load_coco(ann_file)
    allowed = ("Keypoints are [x1, y1, v1, ..., xK, yK, vK]: 3 * K finite numbers in pixels with "
               "v in {0, 1, 2} (0 unlabelled, 1 labelled but hidden, 2 visible), and 'num_keypoints' "
               "an int >= 0 counting the labelled ones")

    def fail(problem: str) -> None:
        raise MalformedAnnotationError(f"Annotation file {ann_file} is not valid COCO keypoint data: {problem}.")

    categories = [c for c in coco.dataset["categories"] if "keypoints" in c]
    if len(categories) != 1:
        fail(f"{len(categories)} categories have a 'keypoints' list, need exactly one (e.g. "
             f"{{'id': 1, 'name': 'person', 'keypoints': ['nose', ...]}})")
    category = categories[0]
    names = category["keypoints"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        fail(f"category id {category['id']} has keypoints {names!r}, not a non-empty list of names")
    size = 3 * len(names)
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] != category["id"]:
            continue
        values = ann.setdefault("keypoints", [0] * size)
        if not (isinstance(values, list) and len(values) == size
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
                and all(v in (0, 1, 2) for v in values[2::3])):
            fail(f"annotation id {ann['id']} has keypoints {_short(values)}, need {size} values for the "
                 f"{len(names)} keypoints {names}. {allowed}")
        count = ann.setdefault("num_keypoints", sum(v > 0 for v in values[2::3]))
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            fail(f"annotation id {ann['id']} has num_keypoints {count!r}. {allowed}")
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    return coco, category


def _short(values) -> str:
    text = repr(values)
    return text if len(text) <= 80 else text[:77] + "..."


class KeypointDataset(Dataset):
    """One COCO keypoints split, top-down: ``dataset[i]`` is ``(image, target)`` of the i-th kept
    annotation (see the module docstring for the crop):

    * ``image``: float32 [3, S, S] RGB in [0, 1] (S = image_size);
    * ``target``: ``{"keypoints": float32 [K, 2] crop pixels, "visible": bool [K] (v > 0),
      "norm": float32 scalar sqrt(bbox w * h) in crop pixels (the NME / PCK normaliser),
      "crop": float32 [3] (x0, y0, scale) with original = crop * scale + (x0, y0),
      "image_id": int64 scalar, "ann_id": int64 scalar}``.

    Crowd annotations, those without labelled keypoints, with a box of width or height <= 0 or of
    another category are skipped and counted in ``skipped``. ``max_images`` keeps the first
    images by id; ``split`` only names the split in error messages.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, image_size: int = 64,
                 crop_margin: float = 1.25, max_images: int | None = None, split: str | None = None):
        if crop_margin <= 0:
            raise ValueError(f"crop_margin must be > 0 (the crop side over the box's longer side), got {crop_margin}.")
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.image_size, self.crop_margin = image_size, crop_margin
        where = f"split '{split}' ({self.ann_file})" if split else str(self.ann_file)
        if not self.ann_file.is_file():
            raise AnnotationFileNotFoundError(
                f"Annotation file for {where} does not exist. Put the COCO keypoints json there, point "
                f"data.ann_file at it (a pattern with {{split}}), or drop the split from data.splits."
            )
        self.coco, self.category = load_coco_keypoints(self.ann_file)
        self.image_ids = split_image_ids(self.coco, self.image_dir, max_images, where)
        self.skipped = {"crowd": 0, "no_keypoints": 0, "degenerate": 0, "other_category": 0}
        self.annotations = [ann for image_id in self.image_ids for ann in self._kept(image_id)]
        if not self.annotations:
            raise EmptySplitError(
                f"Annotation file for {where} has no usable keypoint annotation (skipped: {self.skipped}). "
                f"Each sample needs a non-crowd annotation with labelled keypoints and a box."
            )
        self.clipped = 0
        self._targets = [self._target(ann) for ann in self.annotations]
        if self.clipped:
            log.warning("%d labelled keypoint(s) of %s lie outside their image or crop and were clipped into it.",
                        self.clipped, where)

    @property
    def category_id(self) -> int:
        return self.category["id"]

    @property
    def keypoint_names(self) -> list[str]:
        return list(self.category["keypoints"])

    @property
    def num_keypoints(self) -> int:
        return len(self.category["keypoints"])

    def _kept(self, image_id: int) -> list[dict]:
        kept = []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            if ann["category_id"] != self.category_id:
                self.skipped["other_category"] += 1
            elif ann.get("iscrowd", 0):
                self.skipped["crowd"] += 1
            elif ann["num_keypoints"] == 0 or not any(v > 0 for v in ann["keypoints"][2::3]):
                self.skipped["no_keypoints"] += 1
            elif ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
                self.skipped["degenerate"] += 1
            else:
                kept.append(ann)
        return kept

    def _image_size(self, image_id: int) -> tuple[int, int]:
        info = self.coco.imgs[image_id]
        if "width" in info and "height" in info:
            return info["width"], info["height"]
        with Image.open(self.image_dir / info["file_name"]) as file:
            return file.size

    def _crop_box(self, ann: dict) -> tuple[float, float, float]:
        """``(x0, y0, side)``: the square of side ``crop_margin x max(w, h)`` centred on the box."""
        x, y, w, h = ann["bbox"]
        side = max(w, h) * self.crop_margin
        return x + (w - side) / 2, y + (h - side) / 2, side

    def _target(self, ann: dict) -> dict:
        """The sample's target (see the class docstring); counts clipped labelled keypoints."""
        size = self.image_size
        values = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        visible = values[:, 2] > 0
        x0, y0, side = self._crop_box(ann)
        scale, (w, h) = side / size, ann["bbox"][2:]
        inside = np.clip(values[:, :2], 0.0, self._image_size(ann["image_id"]))
        mapped = (inside - [x0, y0]) / scale
        points = np.clip(mapped, 0.0, size)
        moved = (inside != values[:, :2]).any(1) | (points != mapped).any(1)
        self.clipped += int((moved & visible).sum())
        return {
            "keypoints": torch.from_numpy(points).float(), "visible": torch.from_numpy(visible),
            "norm": torch.tensor(math.sqrt(w * h) / scale, dtype=torch.float32),
            "crop": torch.tensor([x0, y0, scale], dtype=torch.float32),
            "image_id": torch.tensor(ann["image_id"], dtype=torch.int64),
            "ann_id": torch.tensor(ann["id"], dtype=torch.int64),
        }

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        target = self._targets[index]
        ann = self.annotations[index]
        image = read_rgb(self.image_dir / self.coco.imgs[ann["image_id"]]["file_name"],
                         f"image id {ann['image_id']}, annotation id {ann['id']}")
        crop = _crop(image, *self._crop_box(ann), self.image_size)
        pixels = torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return pixels, target


def _crop(image: Image.Image, x0: float, y0: float, side: float, size: int) -> Image.Image:
    """The square ``[x0, x0 + side) x [y0, y0 + side)`` of ``image`` resized to ``size x size``:
    output pixel ``i`` samples around ``x0 + (i + 0.5) * side / size`` (PIL's convention)."""
    reach = math.ceil(max(side / size, 1.0)) + 1  # the bilinear filter's support, in input pixels
    left, top = math.floor(x0) - reach, math.floor(y0) - reach
    right, bottom = math.ceil(x0 + side) + reach, math.ceil(y0 + side) + reach
    region = image.crop((left, top, right, bottom))  # zeros outside the image
    return region.resize((size, size), Image.BILINEAR, box=(x0 - left, y0 - top, x0 - left + side, y0 - top + side))


def keypoint_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """``[(image [3, S, S], target)] * B -> (images [B, 3, S, S], {key: stacked [B, ...]})``."""
    images, targets = zip(*batch)
    return torch.stack(images), {key: torch.stack([t[key] for t in targets]) for key in targets[0]}


class KeypointDataModule(SplitFoldersDataModule):
    """Keypoint splits of a COCO keypoints folder (see the module docstring and
    :class:`~lightning_ptq.core.coco_folders.SplitFoldersDataModule`), cropped top-down with
    ``crop_margin``. Every split must have the keypoint names of the reference split. Batches are
    ``(images float32 [B, 3, S, S], dict of stacked targets)`` from :func:`keypoint_collate`;
    ``generator_kwargs`` go to :func:`generate_keypoint_dataset`.
    """

    generate = staticmethod(generate_keypoint_dataset)
    collate = staticmethod(keypoint_collate)

    def __init__(self, root: str | os.PathLike | None, ann_file: str = "annotations/person_keypoints_{split}.json",
                 image_dir: str = "images", splits: Sequence[str] = ("train", "calib", "val", "test"),
                 image_size: int = 64, batch_size: int = 32, num_workers: int = 0,
                 generate_default: bool = False, generator_kwargs: Mapping | None = None,
                 max_images: int | Mapping[str, int] | None = None, crop_margin: float = 1.25,
                 default_root: str | os.PathLike | None = None):
        super().__init__(root, ann_file, image_dir, splits, image_size, batch_size, num_workers,
                         generate_default, generator_kwargs, max_images, default_root)
        self.crop_margin = crop_margin

    def _load(self, split: str) -> KeypointDataset:
        reference = self._reference_split()
        dataset = KeypointDataset(*self._split_paths(split), self.image_size, self.crop_margin,
                                  max_images=self._max_images(split), split=split)
        names = dataset.keypoint_names if split == reference else self.dataset(reference).keypoint_names
        if dataset.keypoint_names != names:
            raise MalformedAnnotationError(
                f"Annotation file of split '{split}' ({dataset.ann_file}) has keypoints "
                f"{dataset.keypoint_names}, but split '{reference}' has {names}. Give every split "
                f"the same keypoint category."
            )
        return dataset

    @property
    def num_keypoints(self) -> int:
        return self.dataset(self._reference_split()).num_keypoints

    @property
    def keypoint_names(self) -> list[str]:
        return self.dataset(self._reference_split()).keypoint_names

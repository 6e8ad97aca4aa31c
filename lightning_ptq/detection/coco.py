"""COCO-format detection data: a validated dataset, a collate function and a Lightning data module.

Works with any folder in COCO detection format, read through ``pycocotools``::

    <root>/annotations/instances_<split>.json    (``ann_file`` pattern)
    <root>/images/<file_name from the json>      (``image_dir``, may contain ``{split}``)

Images of any size are resized to ``image_size x image_size`` with a plain (aspect-distorting)
bilinear resize; boxes are scaled by the same per-axis factors. The split folders, the json
reading and their errors are shared with the keypoint data (:mod:`lightning_ptq.core.coco_folders`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..core.coco_folders import (
    AnnotationFileNotFoundError, MalformedAnnotationError, SplitFoldersDataModule, load_coco, split_image_ids,
)
from ..core.images import read_rgb
from .synthetic import generate_detection_dataset

log = logging.getLogger(__name__)


class CocoDetectionDataset(Dataset):
    """One COCO split. ``dataset[i]`` is ``(image, target)``:

    * ``image``: float32 [3, S, S] RGB in [0, 1], resized from any input size (S = image_size);
    * ``target``: ``{"boxes": float32 [N, 4] xyxy pixels of the resized image, "labels": int64 [N]
      contiguous 0..C-1, "image_id": int}``.

    Labels follow ``category_ids`` (COCO category ids in label order; default: this file's ids
    sorted), so splits built with the same list share one mapping. Crowd annotations and boxes
    with zero width or height are skipped, counted in ``skipped`` and logged (a negative one is a
    :class:`MalformedAnnotationError`). ``max_images`` keeps the
    first images by id; ``split`` only names the split in error messages.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, image_size: int = 128,
                 category_ids: Sequence[int] | None = None, max_images: int | None = None,
                 split: str | None = None):
        self.image_dir, self.ann_file, self.image_size = Path(image_dir), Path(ann_file), image_size
        self.where = where = f"split '{split}' ({self.ann_file})" if split else str(self.ann_file)
        if not self.ann_file.is_file():
            raise AnnotationFileNotFoundError(
                f"Annotation file for {where} does not exist. Put the COCO json there, point "
                f"data.ann_file at it (a pattern with {{split}}), or drop the split from data.splits."
            )
        self.coco = load_coco(self.ann_file)
        self.category_ids = list(category_ids) if category_ids is not None else sorted(self.coco.getCatIds())
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        unknown = sorted(set(self.coco.getCatIds()) - set(self._label_of))
        if unknown:
            raise MalformedAnnotationError(
                f"Annotation file for {where} has category ids {unknown} that the shared label "
                f"mapping {self.category_ids} (from the first split) lacks. Give every split the "
                f"same 'categories' list."
            )
        self.image_ids = split_image_ids(self.coco, self.image_dir, max_images, where)
        self.skipped = {"crowd": 0, "degenerate": 0}
        self._targets = [self._read_target(image_id) for image_id in self.image_ids]
        if any(self.skipped.values()):
            log.warning("%s: skipped %d crowd annotation(s) and %d box(es) of zero width or height",
                        where, self.skipped["crowd"], self.skipped["degenerate"])

    @property
    def class_names(self) -> list[str]:
        return [self.coco.cats[cid]["name"] if cid in self.coco.cats else str(cid) for cid in self.category_ids]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def image_classes(self) -> list[set[int]]:
        """The labels present in each image (for class-balanced selection)."""
        return [set(labels.tolist()) for _, labels in self._targets]

    def _read_target(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept boxes as float64 [N, 4] xywh in original pixels, and labels int64 [N]."""
        boxes, labels = [], []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            if ann.get("iscrowd", 0):
                self.skipped["crowd"] += 1
            elif ann["bbox"][2] == 0 or ann["bbox"][3] == 0:
                self.skipped["degenerate"] += 1
            else:
                boxes.append(ann["bbox"])
                labels.append(self._label_of[ann["category_id"]])
        return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id, size = self.image_ids[index], self.image_size
        image = read_rgb(self.image_dir / self.coco.imgs[image_id]["file_name"], f"image id {image_id} of {self.where}")
        width, height = image.size
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        xywh, labels = self._targets[index]
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        xyxy = xyxy * [size / width, size / height, size / width, size / height]
        boxes = torch.from_numpy(xyxy).float().clamp_(0, size)
        return pixels, {"boxes": boxes, "labels": torch.from_numpy(labels), "image_id": int(image_id)}


def detection_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """``[(image [3, S, S], target)] * B -> (images [B, 3, S, S], [target] * B)``."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


class CocoDataModule(SplitFoldersDataModule):
    """Detection splits of a COCO folder (see the module docstring and
    :class:`SplitFoldersDataModule`). All splits share the label mapping of the reference split.
    Batches are ``(images float32 [B, 3, S, S], list of target dicts)`` from
    :func:`detection_collate`; ``generator_kwargs`` go to :func:`generate_detection_dataset`.
    """

    generate = staticmethod(generate_detection_dataset)
    collate = staticmethod(detection_collate)

    def __init__(self, root: str | os.PathLike | None, ann_file: str = "annotations/instances_{split}.json",
                 image_dir: str = "images", splits: Sequence[str] = ("train", "calib", "val", "test"),
                 image_size: int = 128, batch_size: int = 16, num_workers: int = 0,
                 generate_default: bool = False, generator_kwargs: Mapping | None = None,
                 max_images: int | Mapping[str, int] | None = None, default_root: str | os.PathLike | None = None):
        super().__init__(root, ann_file, image_dir, splits, image_size, batch_size, num_workers,
                         generate_default, generator_kwargs, max_images, default_root)

    def _load(self, split: str) -> CocoDetectionDataset:
        reference = self._reference_split()
        mapping = None if split == reference else self.dataset(reference).category_ids
        return CocoDetectionDataset(*self._split_paths(split), self.image_size, category_ids=mapping,
                                    max_images=self._max_images(split), split=split)

    @property
    def num_classes(self) -> int:
        return self.dataset(self._reference_split()).num_classes

    @property
    def class_names(self) -> list[str]:
        return self.dataset(self._reference_split()).class_names

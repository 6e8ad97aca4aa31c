"""COCO-format detection data: a validated dataset, a collate function and a Lightning data module.

Works with any folder in COCO detection format, read through ``pycocotools``::

    <root>/annotations/instances_<split>.json    (``ann_file`` pattern)
    <root>/images/<file_name from the json>      (``image_dir``, may contain ``{split}``)

Images of any size are resized to ``image_size x image_size`` with a plain (aspect-distorting)
bilinear resize; boxes are scaled by the same per-axis factors.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from ..core import UserError
from ..core.generated import resolve_root
from ..core.images import read_rgb
from .synthetic_detection import generate_detection_dataset

log = logging.getLogger(__name__)


class DatasetRootNotFoundError(UserError, FileNotFoundError):
    """The dataset root folder does not exist."""


class AnnotationFileNotFoundError(UserError, FileNotFoundError):
    """A split's COCO annotation json does not exist."""


class ImageFileNotFoundError(UserError, FileNotFoundError):
    """An image listed in the annotation json is not on disk."""


class MalformedAnnotationError(UserError, ValueError):
    """An annotation json is not valid COCO detection data."""


class EmptySplitError(UserError, ValueError):
    """A split lists no images."""


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Read, validate and index a COCO detection json; raise :class:`MalformedAnnotationError`
    naming the file and the problem when it is not usable."""
    ann_file = Path(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MalformedAnnotationError(
            f"Annotation file {ann_file} is not valid JSON ({err}). Fix or regenerate the file; it "
            f"must be a COCO detection json with 'images', 'annotations' and 'categories' lists."
        ) from err
    _validate(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _validate(data, ann_file: Path) -> None:
    def fail(problem: str) -> None:
        raise MalformedAnnotationError(
            f"Annotation file {ann_file} is not valid COCO detection data: {problem}. Each image "
            f"needs 'id' and 'file_name', each category 'id' and 'name', and each annotation 'id', "
            f"'image_id', 'category_id' and 'bbox': [x, y, width, height] in pixels."
        )

    if not isinstance(data, dict):
        fail(f"the top level is a {type(data).__name__}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        fail(f"missing or non-list key(s) {missing}")
    for kind, keys in (("images", ("id", "file_name")), ("categories", ("id", "name")),
                       ("annotations", ("id", "image_id", "category_id", "bbox"))):
        for index, entry in enumerate(data[kind]):
            if not isinstance(entry, dict) or any(key not in entry for key in keys):
                fail(f"{kind}[{index}] lacks one of {list(keys)}")
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for ann in data["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            fail(f"annotation id {ann['id']} has bbox {bbox!r}, not 4 finite numbers")
        if bbox[2] < 0 or bbox[3] < 0:
            fail(f"annotation id {ann['id']} has bbox {bbox!r}, with a negative width or height (COCO boxes are "
                 f"[x, y, width, height] from the top-left corner; a box given as corners needs converting)")
        if ann["image_id"] not in image_ids:
            fail(f"annotation id {ann['id']} refers to image_id {ann['image_id']!r}, which is not in 'images'")
        if ann["category_id"] not in category_ids:
            fail(f"annotation id {ann['id']} refers to category_id {ann['category_id']!r}, which is not in 'categories'")


def split_image_ids(coco: COCO, image_dir: Path, max_images: int | None, where: str) -> list[int]:
    """The first ``max_images`` image ids of a split (all by default), sorted; raises
    :class:`EmptySplitError` when there is none and :class:`ImageFileNotFoundError` when one of
    their files is not on disk."""
    image_ids = sorted(coco.getImgIds())[:max_images]
    if not image_ids:
        raise EmptySplitError(
            f"Annotation file for {where} lists no images, so this split is empty. Add images "
            f"to it (a calibration split needs at least one batch), or regenerate the data."
        )
    missing = [image_dir / coco.imgs[i]["file_name"] for i in image_ids
               if not (image_dir / coco.imgs[i]["file_name"]).is_file()]
    if missing:
        raise ImageFileNotFoundError(
            f"{len(missing)} image file(s) listed in {where} do not exist, e.g. {missing[0]}. "
            f"'file_name' is read relative to the image folder {image_dir}; point "
            f"data.image_dir at the right folder or restore the missing files."
        )
    return image_ids


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


class SplitFoldersDataModule(LightningDataModule):
    """Train / calib / val / test loaders over a folder of COCO-format splits; what the detection
    and keypoint data modules share. A subclass sets ``generate`` (the default data's generator)
    and ``collate``, and builds one split's dataset in ``_load(split)``.

    ``ann_file`` and ``image_dir`` are relative to ``root`` and may contain ``{split}``.
    ``root=None`` reads the synthetic default dataset at ``default_root``, which
    :meth:`prepare_data` writes there first (``generator_kwargs`` go to the generator; a no-op when
    it is already there). A ``root`` you give is only read, unless ``generate_default=True`` asks
    for the default dataset to be written there.
    ``max_images`` caps each split: one int for all, or ``{split: int}``. The first split whose
    annotation file exists is the reference the others must agree with.
    """

    generate: Callable
    collate: Callable

    def __init__(self, root: str | os.PathLike | None, ann_file: str, image_dir: str = "images",
                 splits: Sequence[str] = ("train", "calib", "val", "test"), image_size: int = 128,
                 batch_size: int = 16, num_workers: int = 0, generate_default: bool = False,
                 generator_kwargs: Mapping | None = None, max_images: int | Mapping[str, int] | None = None,
                 default_root: str | os.PathLike | None = None):
        super().__init__()
        self.root, generate_default = resolve_root(root, default_root, generate_default)
        self.ann_file, self.image_dir = ann_file, image_dir
        self.splits, self.image_size = tuple(splits), image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.generate_default, self.generator_kwargs = generate_default, dict(generator_kwargs or {})
        self.max_images = max_images
        self._datasets: dict[str, Dataset] = {}
        self._prepared = False

    def prepare_data(self) -> None:
        if self.generate_default:
            type(self).generate(self.root, **self.generator_kwargs)
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        """Load every configured split, so problems surface before training starts."""
        for split in self.splits:
            self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """The (cached) dataset of ``split``; generates the default data first if asked to."""
        if split not in self.splits:
            raise ValueError(f"Split '{split}' is not configured; data.splits is {list(self.splits)}.")
        if split not in self._datasets:
            self._datasets[split] = self._load(split)
        return self._datasets[split]

    def _load(self, split: str) -> Dataset:
        raise NotImplementedError

    def _split_paths(self, split: str) -> tuple[Path, Path]:
        """(image folder, annotation file) of ``split``."""
        return self.root / self.image_dir.format(split=split), self.root / self.ann_file.format(split=split)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def calib_dataloader(self) -> DataLoader:
        return self._loader("calib", shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=type(self).collate,
                          persistent_workers=self.num_workers > 0)

    def _max_images(self, split: str) -> int | None:
        if isinstance(self.max_images, Mapping):
            return self.max_images.get(split)
        return self.max_images

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise DatasetRootNotFoundError(
                f"Dataset root folder {self.root} does not exist. Set data.root to your COCO folder (holding "
                f"{self.ann_file} and {self.image_dir}/), or leave it unset (data.root=null) for the embedded "
                f"default data; data.generate_default=true writes the default data at data.root."
            )

    def _reference_split(self) -> str:
        """First configured split whose annotation file exists (the others must agree with it);
        generates the default data first when asked to and not done yet."""
        if self.generate_default and not self._prepared:
            self.prepare_data()
        self._check_root()
        for split in self.splits:
            if (self.root / self.ann_file.format(split=split)).is_file():
                return split
        return self.splits[0]  # its dataset raises AnnotationFileNotFoundError


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

"""COCO-format folders of splits, shared by the detection and keypoint data: reading and
validating a COCO json, a split's image ids, and the Lightning data module over
``<root>/<ann_file with {split}>`` + ``<root>/<image_dir>`` that both build on (the classifier's
ImageFolder data shares its errors)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from .errors import UserError
from .splits import SplitsDataModule


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


class SplitFoldersDataModule(SplitsDataModule):
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
        super().__init__(root, splits, batch_size, num_workers, generate_default, generator_kwargs, default_root)
        self.ann_file, self.image_dir = ann_file, image_dir
        self.image_size, self.max_images = image_size, max_images

    def _generate(self) -> None:
        type(self).generate(self.root, **self.generator_kwargs)

    def _split_exists(self, split: str) -> bool:
        return (self.root / self.ann_file.format(split=split)).is_file()

    def _layout(self) -> str:
        return f"COCO folder (holding {self.ann_file} and {self.image_dir}/)"

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

"""Image-classification data in torchvision ImageFolder layout, and its Lightning data module.

Works with any folder laid out as::

    <root>/<split>/<class_name>/<image file>   (png, jpg, ...: torchvision's ImageFolder)

the user's data or the generated default of :mod:`lightning_ptq.classify.synthetic`. Every split
must have the same class folders (their sorted names give the labels 0..C-1); a class folder may
be empty in a split, the split as a whole may not. Images are read as RGB, resized to
``image_size x image_size`` (antialiased bilinear) when they have another size, and returned as
float32 [3, S, S] in [0, 1].
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from ..core import UserError
from ..core.coco_folders import EmptySplitError
from ..core.images import read_rgb
from ..core.splits import SplitsDataModule
from .synthetic import generate_classification_dataset

log = logging.getLogger(__name__)


class SplitFolderNotFoundError(UserError, FileNotFoundError):
    """A configured split has no folder under the dataset root."""


class ClassFoldersMismatchError(UserError, ValueError):
    """Two splits have different class folders, so their labels would not agree."""


class ToTensor:
    """``PIL image -> float32 [3, S, S]`` in [0, 1], resized to ``size x size`` (antialiased
    bilinear) only when it has another size. A class, so that worker processes can pickle it."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


class ClassificationDataModule(SplitsDataModule):
    """Splits of an ImageFolder dataset (see the module docstring). Batches are
    ``(images float32 [B, 3, S, S], labels int64 [B])``.

    ``root=None`` reads the synthetic default dataset at ``default_root``, which
    :meth:`prepare_data` writes there first (a no-op when it is already there); a ``root`` you
    give is only read, unless ``generate_default=True`` asks for the default dataset to be written
    there. ``generator_kwargs`` go to
    :func:`~lightning_ptq.classify.synthetic.generate_classification_dataset`, whose
    ``image_size`` defaults to this module's. The first configured split whose folder exists is
    the reference whose class folders the others must have.
    """

    def __init__(self, root: str | os.PathLike | None, image_size: int = 32, batch_size: int = 64,
                 num_workers: int = 0, generate_default: bool = False, generator_kwargs: Mapping | None = None,
                 splits: Sequence[str] = ("train", "pool", "test"), default_root: str | os.PathLike | None = None):
        if not (isinstance(image_size, int) and image_size >= 1):
            raise ValueError(f"data.image_size must be a positive int (pixels), got {image_size!r}.")
        if isinstance(splits, str) or not splits:
            raise ValueError(f"data.splits must be a non-empty list of split names, got {splits!r}.")
        super().__init__(root, splits, batch_size, num_workers, generate_default, generator_kwargs, default_root)
        self.image_size = image_size

    def _generate(self) -> None:
        generate_classification_dataset(self.root, **{"image_size": self.image_size, **self.generator_kwargs})

    def _split_exists(self, split: str) -> bool:
        return (self.root / split).is_dir()

    def _layout(self) -> str:
        return f"ImageFolder folder (holding <split>/<class_name>/<image> for the splits {list(self.splits)})"

    def _load(self, split: str) -> ImageFolder:
        reference = self._reference_split()
        folder = self.root / split
        if not folder.is_dir():
            raise SplitFolderNotFoundError(
                f"Split folder {folder} does not exist. Put the split's images there as "
                f"{folder}/<class_name>/<image>, or drop '{split}' from data.splits (now {list(self.splits)})."
            )
        classes = [entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")]
        if not classes:
            raise EmptySplitError(
                f"Split folder {folder} has no class folders. Lay it out as {folder}/<class_name>/<image> "
                f"(torchvision ImageFolder)."
            )
        dataset = ImageFolder(str(folder), transform=ToTensor(self.image_size), loader=read_rgb, allow_empty=True)
        if not dataset.samples:
            raise EmptySplitError(
                f"Split folder {folder} has no images in its class folders {dataset.classes} (ImageFolder "
                f"reads png, jpg, jpeg, bmp, tif, tiff, webp, ppm, pgm). Add images, or drop '{split}' "
                f"from data.splits."
            )
        if split != reference:
            expected = self.dataset(reference).classes
            if dataset.classes != expected:
                only_here = sorted(set(dataset.classes) - set(expected))
                only_there = sorted(set(expected) - set(dataset.classes))
                raise ClassFoldersMismatchError(
                    f"Split '{split}' ({folder}) has class folders {dataset.classes}, but split "
                    f"'{reference}' has {expected} (only in '{split}': {only_here}, only in "
                    f"'{reference}': {only_there}). Give every split the same class folders (an empty "
                    f"folder is fine), so that the labels agree."
                )
        return dataset

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset(self._reference_split()).classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self, split: str) -> list[int]:
        """The label of every image of ``split``, in dataset order."""
        return list(self.dataset(split).targets)

    def loader(self, split: str, indices: Sequence[int] | None = None, shuffle: bool = False) -> DataLoader:
        """A loader over ``split``, or over the images ``indices`` of it (a ``Subset``)."""
        dataset = self.dataset(split)
        if indices is not None:
            indices = [int(i) for i in indices]
            bad = [i for i in indices if not 0 <= i < len(dataset)]
            if bad:
                raise IndexError(f"Indices {bad[:5]} are outside split '{split}' ({len(dataset)} images).")
            dataset = Subset(dataset, indices)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

"""Named splits under one root folder, each loaded once: what the COCO-format data modules
(detection, keypoints) and the classifier's ImageFolder data module share."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset

from .errors import UserError
from .generated import resolve_root


class DatasetRootNotFoundError(UserError, FileNotFoundError):
    """The dataset root folder does not exist."""


class SplitsDataModule(LightningDataModule):
    """``root``'s splits, each built once by ``_load(split)``. ``root=None`` reads the embedded
    default data at ``default_root``, which :meth:`prepare_data` writes there first (a no-op when
    it is already there; see :func:`~lightning_ptq.core.generated.resolve_root`). A subclass
    writes the default data (``_generate``), says whether a split's files exist
    (``_split_exists``), loads one split (``_load``) and describes its layout for the error
    about a missing root (``_layout``)."""

    def __init__(self, root: str | os.PathLike | None, splits: Sequence[str], batch_size: int, num_workers: int,
                 generate_default: bool, generator_kwargs: Mapping | None, default_root: str | os.PathLike | None):
        super().__init__()
        self.root, self.generate_default = resolve_root(root, default_root, generate_default)
        self.splits = tuple(splits)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.generator_kwargs = dict(generator_kwargs or {})
        self._datasets: dict[str, Dataset] = {}
        self._prepared = False

    def _generate(self) -> None:
        raise NotImplementedError

    def _split_exists(self, split: str) -> bool:
        raise NotImplementedError

    def _load(self, split: str) -> Dataset:
        raise NotImplementedError

    def _layout(self) -> str:
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.generate_default:
            self._generate()
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

    def _reference_split(self) -> str:
        """First configured split whose files exist (the others must agree with it); generates the
        default data first when asked to and not done yet."""
        if self.generate_default and not self._prepared:
            self.prepare_data()
        if not self.root.is_dir():
            raise DatasetRootNotFoundError(
                f"Dataset root folder {self.root} does not exist. Set data.root to your {self._layout()}, or leave "
                f"it unset (data.root=null) for the embedded default data; data.generate_default=true writes the "
                f"default data at data.root."
            )
        for split in self.splits:
            if self._split_exists(split):
                return split
        return self.splits[0]  # its dataset raises the error that names what is missing

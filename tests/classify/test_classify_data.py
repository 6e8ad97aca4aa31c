"""The ImageFolder data module: batches, labels, subsets, resizing and errors that name the
problem and the fix."""
import shutil

import pytest
import torch
from torch.utils.data import Subset

from lightning_ptq.classify import (
    CLASS_NAMES, ClassFoldersMismatchError, ClassificationDataModule, SplitFolderNotFoundError,
)
from lightning_ptq.detection import DatasetRootNotFoundError, EmptySplitError


def test_batches_labels_and_subsets(small_classes):
    dm = ClassificationDataModule(small_classes, batch_size=8, generate_default=False)
    dm.setup()
    assert dm.class_names == list(CLASS_NAMES) and dm.num_classes == len(CLASS_NAMES)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(dm.labels("pool")) == sorted(list(range(len(CLASS_NAMES))) * 2)
    loader = dm.loader("test", indices=[3, 1])
    assert isinstance(loader.dataset, Subset)
    _, subset_labels = next(iter(loader))
    assert subset_labels.tolist() == [dm.labels("test")[3], dm.labels("test")[1]]
    assert len(dm.test_dataloader().dataset) == 20
    with pytest.raises(IndexError, match=r"\[20\] are outside split 'test' \(20 images\)"):
        dm.loader("test", indices=[20])
    with pytest.raises(ValueError, match=r"Split 'val' is not configured"):
        dm.dataset("val")


def test_images_of_another_size_are_resized(small_classes):
    dm = ClassificationDataModule(small_classes, image_size=20, generate_default=False)
    images, _ = next(iter(dm.loader("pool")))
    assert images.shape[1:] == (3, 20, 20)


def test_generate_default_writes_the_data_at_the_image_size(tmp_path):
    dm = ClassificationDataModule(None, default_root=tmp_path / "gen", image_size=16, batch_size=4,
                                  generator_kwargs={"splits": {"train": 10, "pool": 10, "test": 10}})
    images, _ = next(iter(dm.train_dataloader()))  # generated on first use
    assert images.shape == (4, 3, 16, 16) and (tmp_path / "gen" / "meta.json").is_file()


def test_missing_root_names_the_path_and_the_fix(tmp_path):
    dm = ClassificationDataModule(tmp_path / "nowhere", generate_default=False)
    with pytest.raises(DatasetRootNotFoundError, match=rf"{tmp_path / 'nowhere'} does not exist[\s\S]*"
                                                       r"data.root=[\s\S]*data.generate_default=true"):
        dm.setup()


def test_missing_and_empty_splits(small_classes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_classes / "train", root / "train")
    dm = ClassificationDataModule(root, generate_default=False)
    with pytest.raises(SplitFolderNotFoundError, match=rf"{root / 'pool'} does not exist[\s\S]*data.splits"):
        dm.dataset("pool")
    (root / "pool" / "circle").mkdir(parents=True)
    with pytest.raises(EmptySplitError, match=rf"{root / 'pool'} has no images"):
        dm.dataset("pool")
    (root / "test").mkdir()
    with pytest.raises(EmptySplitError, match=rf"{root / 'test'} has no class folders"):
        dm.dataset("test")


def test_class_folders_that_differ_between_splits_are_named(small_classes, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_classes, root)
    (root / "test" / "star").rename(root / "test" / "starfish")
    dm = ClassificationDataModule(root, generate_default=False)
    with pytest.raises(ClassFoldersMismatchError, match=r"only in 'test': \['starfish'\], only in 'train': \['star'\]"):
        dm.setup()

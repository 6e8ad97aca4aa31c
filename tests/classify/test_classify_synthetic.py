"""The embedded classification data: ImageFolder layout, balanced classes, deterministic, safe
generation."""
import json

import numpy as np
import pytest
from PIL import Image

from lightning_ptq.classify import CLASS_NAMES, ClassDifficulty, generate_classification_dataset
from lightning_ptq.detection import NotAGeneratedDatasetError

SPLITS = {"train": 40, "pool": 20, "test": 20}  # as the small_classes fixture (conftest.py)


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def test_imagefolder_layout_with_balanced_classes_and_unique_ids(small_classes):
    assert len(CLASS_NAMES) >= 10 and list(CLASS_NAMES) == sorted(CLASS_NAMES)  # index = ImageFolder label
    for split, count in SPLITS.items():
        assert sorted(p.name for p in (small_classes / split).iterdir()) == list(CLASS_NAMES)
        per_class = [len(list((small_classes / split / name).glob("*.png"))) for name in CLASS_NAMES]
        assert per_class == [count // len(CLASS_NAMES)] * len(CLASS_NAMES)
    names = [p.name for p in files(small_classes)]
    assert len(names) == len(set(names)) == sum(SPLITS.values())  # ids unique across splits
    with Image.open(small_classes / "train" / "circle" / "000001.png") as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    meta = json.loads((small_classes / "meta.json").read_text())
    assert meta["generator"] == "lightning_ptq.synthetic_classes" and meta["classes"] == list(CLASS_NAMES)
    assert meta["splits"] == [[k, v] for k, v in SPLITS.items()] and meta["image_size"] == 32


def test_same_seed_gives_identical_files_and_prefixes_do_not_depend_on_split_size(small_classes, tmp_path):
    again = generate_classification_dataset(tmp_path / "again", splits=SPLITS)
    assert files(again) == files(small_classes)
    for name in files(small_classes):
        assert (again / name).read_bytes() == (small_classes / name).read_bytes(), name
    shorter = generate_classification_dataset(tmp_path / "shorter", splits={"train": 3})
    for name in files(shorter):
        assert (shorter / name).read_bytes() == (small_classes / name).read_bytes(), name


def test_different_seeds_and_splits_differ(small_classes, tmp_path):
    other = generate_classification_dataset(tmp_path / "other", splits={"train": 1}, seed=1)
    first = "train/circle/000001.png"
    assert (other / first).read_bytes() != (small_classes / first).read_bytes()
    pixels = [np.asarray(Image.open(small_classes / split / "circle" / f"{i:06d}.png"))
              for split, i in (("train", 1), ("pool", 41))]  # image 0 of each split
    assert not np.array_equal(*pixels)  # every split has its own stream


def test_second_call_is_a_no_op_and_foreign_folders_are_refused(small_classes, tmp_path):
    before = (small_classes / "meta.json").stat().st_mtime_ns
    generate_classification_dataset(small_classes, splits=SPLITS)
    assert (small_classes / "meta.json").stat().st_mtime_ns == before
    mine = tmp_path / "mine"
    (mine / "train" / "cat").mkdir(parents=True)
    (mine / "train" / "cat" / "1.png").write_bytes(b"precious")
    with pytest.raises(NotAGeneratedDatasetError, match=str(mine)):
        generate_classification_dataset(mine, splits={"train": 2})
    assert (mine / "train" / "cat" / "1.png").read_bytes() == b"precious"


@pytest.mark.parametrize("kwargs, message", [
    ({"blur": 1}, r"Unknown synthetic classification data knob\(s\) \['blur'\]"),
    ({"min_size": 0.9, "max_size": 0.5}, r"min_size <= max_size"),
    ({"max_stretch": 1.5}, r"max_stretch < min_elongation"),
    ({"image_size": 4}, r"image_size must be an int >= 8"),
    ({"splits": {"train": -1}}, r"Bad splits \{'train': -1\}"),
])
def test_bad_settings_are_named(kwargs, message, tmp_path):
    with pytest.raises((TypeError, ValueError), match=message):
        generate_classification_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_difficulty_defaults_pass_their_own_check_and_bounds_are_enforced():
    ClassDifficulty().check(32)  # raises on a bad default
    with pytest.raises(ValueError, match=r"need min_size \* image_size >= 4 pixels"):
        ClassDifficulty().check(8)  # the default min_size is too small for 8-pixel images
    with pytest.raises(ValueError, match=r"need noise >= 0"):
        ClassDifficulty(noise=-0.1).check(32)

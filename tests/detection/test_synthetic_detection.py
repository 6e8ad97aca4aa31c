import hashlib
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from lightning_ptq.detection import Difficulty, NotAGeneratedDatasetError, generate_detection_dataset
from lightning_ptq.core.drawing import rasterise
from lightning_ptq.detection import synthetic as synth

SPLITS = ("train", "calib", "val", "test")


def load(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def all_annotations(root):
    return [ann for split in SPLITS for ann in load(root, split)["annotations"]]


def test_same_seed_gives_identical_files_and_prefixes_do_not_depend_on_split_size(small_dataset, tmp_path):
    again = generate_detection_dataset(tmp_path / "again", splits={"train": 8, "calib": 8, "val": 8, "test": 8})
    shorter = generate_detection_dataset(tmp_path / "shorter", splits={"train": 2})
    for split in SPLITS:
        name = f"instances_{split}.json"
        assert (again / "annotations" / name).read_bytes() == (small_dataset / "annotations" / name).read_bytes()
    first = "images/train/000000.png"
    assert (again / first).read_bytes() == (small_dataset / first).read_bytes()
    assert (shorter / first).read_bytes() == (small_dataset / first).read_bytes()


def test_different_seeds_differ(small_dataset, tmp_path):
    other = generate_detection_dataset(tmp_path / "other", splits={"train": 2}, seed=1)
    assert load(other, "train")["annotations"][0]["bbox"] != load(small_dataset, "train")["annotations"][0]["bbox"]
    assert (other / "images/train/000000.png").read_bytes() != (small_dataset / "images/train/000000.png").read_bytes()


def test_splits_have_requested_sizes_and_are_disjoint(small_dataset):
    digests, ids = set(), set()
    for split in SPLITS:
        images = load(small_dataset, split)["images"]
        assert len(images) == 8
        for image in images:
            assert image["file_name"].startswith(f"{split}/")
            digests.add(hashlib.sha256((small_dataset / "images" / image["file_name"]).read_bytes()).hexdigest())
            ids.add(image["id"])
    assert len(digests) == len(ids) == 4 * 8


def test_categories_objects_per_image_and_sizes(small_dataset):
    knobs = Difficulty()
    data = load(small_dataset, "train")
    assert [c["id"] for c in data["categories"]] == list(range(1, len(synth.CLASS_NAMES) + 1))
    assert len(data["categories"]) >= 5
    for split in SPLITS:
        split_data = load(small_dataset, split)
        per_image = {image["id"]: 0 for image in split_data["images"]}
        for ann in split_data["annotations"]:
            per_image[ann["image_id"]] += 1
        assert all(knobs.min_objects <= n <= knobs.max_objects for n in per_image.values())
    sides = np.array([max(a["bbox"][2:]) for a in all_annotations(small_dataset)])
    assert sides.min() >= knobs.min_size - 0.01 and sides.max() <= knobs.max_size + 0.01
    assert (sides < 16).sum() >= 5, "the data needs small objects"
    assert len({a["category_id"] for a in all_annotations(small_dataset)}) == len(synth.CLASS_NAMES)


def test_boxes_inside_image_and_coco_fields(small_dataset):
    for ann in all_annotations(small_dataset):
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w > 0 and h > 0
        assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h + 0.01


def test_boxes_are_tight_around_the_rasterised_shape():
    rng = np.random.default_rng(0)
    for label in range(len(synth.CLASS_NAMES)):
        for _ in range(10):
            outer, hole = synth._shape_polygons(label, rng, Difficulty(), 128)
            alpha, (rows, cols) = rasterise(outer, hole)
            ys, xs = np.nonzero(alpha > 0)
            drawn = np.array([cols.start + xs.min(), rows.start + ys.min(), cols.start + xs.max() + 1, rows.start + ys.max() + 1])
            analytic = np.array([*outer.min(0), *outer.max(0)])
            assert np.abs(drawn - analytic).max() < 1.0, (synth.CLASS_NAMES[label], drawn, analytic)


def test_round_trips_through_pycocotools(small_dataset):
    coco = COCO(str(small_dataset / "annotations" / "instances_val.json"))
    image_id = coco.getImgIds()[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    assert anns and all(a["image_id"] == image_id for a in anns)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(synth.CLASS_NAMES)


def test_second_call_with_same_parameters_does_not_rewrite(tmp_path):
    root = generate_detection_dataset(tmp_path / "d", splits={"calib": 2})
    os.utime(root / "meta.json", (1, 1))
    assert generate_detection_dataset(tmp_path / "d", splits={"calib": 2}) == root
    assert (root / "meta.json").stat().st_mtime == 1
    generate_detection_dataset(tmp_path / "d", splits={"calib": 3}, noise=0.0)
    assert (root / "meta.json").stat().st_mtime != 1
    assert len(load(root, "calib")["images"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "temporary folders are cleaned up"


def test_interrupted_generation_leaves_no_dataset_and_keeps_the_old_one(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_detection_dataset(tmp_path / "new", splits={"val": 2})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    old = generate_detection_dataset(tmp_path / "old", splits={"val": 2})
    meta = (old / "meta.json").read_text()
    monkeypatch.setattr(synth, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_detection_dataset(old, splits={"val": 3})
    assert (old / "meta.json").read_text() == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(NotAGeneratedDatasetError, match="data.generate_default=false"):
        generate_detection_dataset(tmp_path, splits={"val": 1})
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_bad_knobs_are_named(tmp_path):
    with pytest.raises(ValueError, match="min_size <= max_size"):
        generate_detection_dataset(tmp_path / "d", splits={"val": 1}, min_size=30, max_size=20)
    with pytest.raises(TypeError, match="max_objectz"):
        generate_detection_dataset(tmp_path / "d", splits={"val": 1}, max_objectz=3)

"""The embedded keypoint data: deterministic, valid COCO keypoints, landmarks at sub-pixel
positions that the pixels really encode, safe generation."""
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from lightning_ptq.detection import NotAGeneratedDatasetError
from lightning_ptq.keypoints import synthetic as synth
from lightning_ptq.keypoints.synthetic import KEYPOINT_NAMES, KeypointDifficulty, generate_keypoint_dataset

SPLITS = {"train": 8, "calib": 8, "val": 8, "test": 8}


@pytest.fixture(scope="module")
def small_keypoints(tmp_path_factory):
    """Generated keypoint dataset with 8 images per split (default knobs, seed 0)."""
    return generate_keypoint_dataset(tmp_path_factory.mktemp("keypoints") / "data", splits=SPLITS)


def load(root, split):
    return json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())


def all_annotations(root):
    return [ann for split in SPLITS for ann in load(root, split)["annotations"]]


def test_same_seed_gives_identical_files_and_prefixes_do_not_depend_on_split_size(small_keypoints, tmp_path):
    again = generate_keypoint_dataset(tmp_path / "again", splits=SPLITS)
    shorter = generate_keypoint_dataset(tmp_path / "shorter", splits={"train": 2})
    files = sorted(p.relative_to(small_keypoints) for p in small_keypoints.rglob("*") if p.is_file())
    assert len(files) == 1 + 4 + 4 * 8  # meta, 4 jsons, 32 images
    for name in files:
        assert (again / name).read_bytes() == (small_keypoints / name).read_bytes(), name
    first = "images/train/000001.png"
    assert (shorter / first).read_bytes() == (small_keypoints / first).read_bytes()
    assert load(shorter, "train")["annotations"] == load(small_keypoints, "train")["annotations"][:2]


def test_different_seeds_differ(small_keypoints, tmp_path):
    other = generate_keypoint_dataset(tmp_path / "other", splits={"train": 2}, seed=1)
    first = load(other, "train")["annotations"][0]["keypoints"]
    assert first != load(small_keypoints, "train")["annotations"][0]["keypoints"]
    image = "images/train/000000.png"
    assert (other / image).read_bytes() != (small_keypoints / image).read_bytes()


def test_round_trips_through_pycocotools_with_the_keypoint_category(small_keypoints):
    coco = COCO(str(small_keypoints / "annotations" / "person_keypoints_val.json"))
    [category] = coco.loadCats(coco.getCatIds())
    assert category["id"] == 1 and category["name"] == "object"
    assert category["keypoints"] == list(KEYPOINT_NAMES) and len(KEYPOINT_NAMES) == 7
    assert all(1 <= a <= 7 and 1 <= b <= 7 for a, b in category["skeleton"])
    image_ids = coco.getImgIds()
    assert len(image_ids) == 8 and all(len(coco.getAnnIds(imgIds=i)) == 1 for i in image_ids)
    image = coco.loadImgs(image_ids[0])[0]
    assert image["file_name"].startswith("val/") and image["width"] == image["height"] == 64


def test_ids_unique_across_splits(small_keypoints):
    image_ids = [image["id"] for split in SPLITS for image in load(small_keypoints, split)["images"]]
    ann_ids = [ann["id"] for ann in all_annotations(small_keypoints)]
    assert len(set(image_ids)) == len(set(ann_ids)) == 4 * 8


def test_keypoints_are_sub_pixel_inside_the_image_and_the_box(small_keypoints):
    knobs = KeypointDifficulty()
    coords = []
    for ann in all_annotations(small_keypoints):
        values = np.array(ann["keypoints"]).reshape(7, 3)
        assert (values[:, 2] == 2).all() and ann["num_keypoints"] == 7 and ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
        assert knobs.min_size * 64 - 0.01 <= max(w, h) <= knobs.max_size * 64 + 0.01
        assert 0 < ann["area"] < w * h
        assert (values[:, 0] >= x - 0.01).all() and (values[:, 0] <= x + w + 0.01).all()
        assert (values[:, 1] >= y - 0.01).all() and (values[:, 1] <= y + h + 0.01).all()
        coords.append(values[:, :2])
    coords = np.concatenate(coords)
    assert coords.min() >= 0 and coords.max() <= 64
    fractions = coords - np.floor(coords)
    assert (fractions > 0).mean() > 0.95, "landmarks are at sub-pixel positions"
    assert 0.3 < fractions.mean() < 0.7


def test_pixels_encode_the_landmarks_to_sub_pixel_precision():
    """The coverage centroids of the head and of the neck and hip discs follow their landmarks to
    within 0.1 px and without a common offset (0.02 px at most on average), and every limb tip is
    on the drawn figure."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:64, 0:64] + 0.5  # pixel centres
    errors = []
    for _ in range(20):
        parts, discs, keypoints = synth.figure(rng, KeypointDifficulty(), 64)
        for polygon, landmark in ((parts[1], keypoints[0]), (discs[0], keypoints[1]), (discs[1], keypoints[2])):
            alpha = synth._coverage([polygon], 64)
            errors.append(np.array([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum() - landmark)
        body = synth._coverage(parts, 64)
        for x, y in keypoints[3:]:  # the tip's pixel or a neighbour is (partly) drawn
            row, col = min(int(y), 63), min(int(x), 63)
            assert body[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].max() > 0.1
    errors = np.array(errors)
    assert np.abs(errors.mean(0)).max() < 0.02, errors.mean(0)
    assert np.abs(errors).max() < 0.1, errors


def test_second_call_with_same_parameters_does_not_rewrite(tmp_path):
    root = generate_keypoint_dataset(tmp_path / "d", splits={"calib": 2})
    meta = json.loads((root / "meta.json").read_text())
    assert meta["generator"] == "lightning_ptq.synthetic_keypoints" and meta["image_size"] == 64
    os.utime(root / "meta.json", (1, 1))
    assert generate_keypoint_dataset(tmp_path / "d", splits={"calib": 2}) == root
    assert (root / "meta.json").stat().st_mtime == 1
    generate_keypoint_dataset(tmp_path / "d", splits={"calib": 3}, noise=0.0)
    assert (root / "meta.json").stat().st_mtime != 1
    assert len(load(root, "calib")["images"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "temporary folders are cleaned up"


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_keypoint_dataset(tmp_path / "new", splits={"val": 2})
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(NotAGeneratedDatasetError, match="data.generate_default=false"):
        generate_keypoint_dataset(tmp_path, splits={"val": 1})
    assert (tmp_path / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("knobs, rule", [
    ({"min_size": 0.9, "max_size": 0.5}, "min_size <= max_size"),
    ({"min_size": 0.05}, r"min_size \* image_size >= 8"),
    ({"max_rotation": 200}, "max_rotation <= 180"),
    ({"articulation": 2}, "articulation <= 1"),
    ({"noise": -0.1}, "noise >= 0"),
])
def test_bad_knobs_are_named(tmp_path, knobs, rule):
    with pytest.raises(ValueError, match=rule):
        generate_keypoint_dataset(tmp_path / "d", splits={"val": 1}, **knobs)
    assert not (tmp_path / "d").exists()


def test_unknown_knob_is_named(tmp_path):
    with pytest.raises(TypeError, match="max_rotaton"):
        generate_keypoint_dataset(tmp_path / "d", splits={"val": 1}, max_rotaton=30)

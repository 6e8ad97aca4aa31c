"""COCO keypoints loading, top-down: the crop mapping to sub-pixel precision, clipping counted,
malformed files and missing pieces named in the errors, the data module."""
import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_ptq.detection import (
    AnnotationFileNotFoundError, DatasetRootNotFoundError, EmptySplitError, ImageFileNotFoundError,
    MalformedAnnotationError,
)
from lightning_ptq.keypoints.coco_keypoints import KeypointDataModule, KeypointDataset, keypoint_collate
from lightning_ptq.keypoints.synthetic import KEYPOINT_NAMES, generate_keypoint_dataset

NAMES = ["tip", "tail"]


def write_keypoint_coco(root, split, images, annotations, names=NAMES):
    """Write ``root/annotations/person_keypoints_<split>.json``; ``images`` is [(id, file_name,
    pixels uint8 [H, W, 3])], each saved as a PNG under ``root/images``."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for _, file_name, pixels in images:
        (root / "images" / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / file_name)
    data = {
        "images": [{"id": i, "file_name": f, "width": p.shape[1], "height": p.shape[0]} for i, f, p in images],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing", "keypoints": names, "skeleton": [[1, 2]]}],
    }
    path = root / "annotations" / f"person_keypoints_{split}.json"
    path.write_text(json.dumps(data))
    return path


def annotation(ann_id, image_id, bbox, keypoints, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "keypoints": keypoints,
            "num_keypoints": sum(v > 0 for v in keypoints[2::3]), "iscrowd": 0, **extra}


def blobs(width, height, centres, sigma=2.5):
    """Black image with one Gaussian blob per colour channel at the continuous ``centres``."""
    rows, cols = np.mgrid[0:height, 0:width] + 0.5  # pixel i covers [i, i + 1)
    pixels = np.zeros((height, width, 3))
    for channel, (x, y) in enumerate(centres):
        pixels[..., channel] = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2))
    return (pixels * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def small_keypoints(tmp_path_factory):
    return generate_keypoint_dataset(tmp_path_factory.mktemp("keypoints") / "data",
                                     splits={"train": 8, "calib": 8, "val": 8, "test": 8})


@pytest.mark.parametrize("image_size, crop_margin, bbox", [
    (32, 1.25, [120, 30, 40, 40]),  # downsampled 1.56x
    (128, 1.25, [120, 30, 40, 40]),  # upsampled 2.56x
    (64, 1.6, [125, 35, 30, 20]),  # non-square box
    (64, 2.0, [128, 32, 28, 30]),  # the crop leaves the image on the right
])
def test_crop_maps_keypoints_exactly_like_the_pixels(tmp_path, image_size, crop_margin, bbox):
    centres = [(137.3, 41.7), (150.6, 60.2)]
    pixels = blobs(160, 100, centres)
    kps = [v for x, y in centres for v in (x, y, 2)]
    ann_file = write_keypoint_coco(tmp_path, "val", [(5, "a.png", pixels)], [annotation(9, 5, bbox, kps)])
    dataset = KeypointDataset(tmp_path / "images", ann_file, image_size=image_size, crop_margin=crop_margin)
    image, target = dataset[0]
    assert image.shape == (3, image_size, image_size) and dataset.clipped == 0
    rows, cols = np.mgrid[0:image_size, 0:image_size] + 0.5
    for channel, (x, y) in enumerate(target["keypoints"].tolist()):
        weight = image[channel].numpy()
        centroid = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        np.testing.assert_allclose(centroid, [x, y], atol=0.05)
    x0, y0, scale = target["crop"].tolist()
    np.testing.assert_allclose(scale, max(bbox[2:]) * crop_margin / image_size, rtol=1e-6)
    np.testing.assert_allclose(target["keypoints"].numpy() * scale + [x0, y0], centres, atol=1e-3)
    np.testing.assert_allclose(target["norm"].item(), (bbox[2] * bbox[3]) ** 0.5 / scale, rtol=1e-6)
    assert target["visible"].tolist() == [True, True]
    assert target["image_id"].item() == 5 and target["ann_id"].item() == 9


def test_pixels_outside_the_image_are_zero(tmp_path):
    pixels = np.full((50, 80, 3), 200, dtype=np.uint8)
    ann_file = write_keypoint_coco(tmp_path, "val", [(1, "a.png", pixels)],
                                   [annotation(1, 1, [0, 0, 20, 20], [5, 5, 2, 15, 15, 2])])
    image, _ = KeypointDataset(tmp_path / "images", ann_file, image_size=40, crop_margin=2.0)[0]
    assert (image[:, :8, :8] == 0).all()  # the crop starts 10 px = 20 crop px before the image
    assert (image[:, 24:, 24:] == 200 / 255).all()


def test_keypoints_outside_the_image_or_the_crop_are_clipped_and_counted(tmp_path, caplog):
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    anns = [
        annotation(1, 1, [0, 10, 40, 40], [-5, 20, 2, 30, 30, 2]),  # left of the image, inside the crop
        annotation(2, 1, [150, 50, 40, 40], [170, 70, 1, 250, 120, 2]),  # right of and below the image
        annotation(3, 1, [60, 20, 20, 20], [70, 30, 2, 120, 30, 2]),  # inside the image, right of the crop
        annotation(4, 1, [60, 20, 20, 20], [70, 30, 2, -50, 30, 0]),  # unlabelled: clipped, not counted
    ]
    ann_file = write_keypoint_coco(tmp_path, "train", [(1, "a.png", pixels)], anns)
    with caplog.at_level(logging.WARNING):
        dataset = KeypointDataset(tmp_path / "images", ann_file, image_size=64)
    assert dataset.clipped == 3
    assert [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()] == [
        f"3 labelled keypoint(s) of {ann_file} lie outside their image or crop and were clipped into it."]
    for index in range(4):
        keypoints = dataset[index][1]["keypoints"]
        assert keypoints.min() >= 0 and keypoints.max() <= 64
    _, target = dataset[0]
    x0, y0, scale = target["crop"].tolist()
    assert x0 < 0 and target["keypoints"][0, 0].item() == pytest.approx((0 - x0) / scale)  # clipped to x = 0
    assert dataset[2][1]["keypoints"][1, 0].item() == 64.0


def test_crowd_and_unlabelled_annotations_are_skipped_and_counted(tmp_path):
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    anns = [
        annotation(1, 1, [5, 5, 20, 20], [10, 10, 2, 20, 20, 2]),
        annotation(2, 1, [5, 5, 20, 20], [10, 10, 2, 20, 20, 2], iscrowd=1),
        annotation(3, 1, [5, 5, 20, 20], [0, 0, 0, 0, 0, 0]),
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},  # no keypoints at all
        annotation(5, 1, [5, 5, 0, 20], [10, 10, 2, 20, 20, 2]),
    ]
    ann_file = write_keypoint_coco(tmp_path, "train", [(1, "a.png", pixels)], anns)
    dataset = KeypointDataset(tmp_path / "images", ann_file)
    assert len(dataset) == 1 and dataset[0][1]["ann_id"].item() == 1
    assert dataset.skipped == {"crowd": 1, "no_keypoints": 2, "degenerate": 1, "other_category": 0}


def test_generated_data_collates_into_stacked_tensors(small_keypoints):
    dataset = KeypointDataset(small_keypoints / "images", small_keypoints / "annotations/person_keypoints_train.json")
    assert len(dataset) == 8 and dataset.num_keypoints == 7 and dataset.keypoint_names == list(KEYPOINT_NAMES)
    images, targets = keypoint_collate([dataset[0], dataset[1], dataset[2]])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    shapes = {key: (tuple(value.shape), value.dtype) for key, value in targets.items()}
    assert shapes == {"keypoints": ((3, 7, 2), torch.float32), "visible": ((3, 7), torch.bool),
                      "norm": ((3,), torch.float32), "crop": ((3, 3), torch.float32),
                      "image_id": ((3,), torch.int64), "ann_id": ((3,), torch.int64)}
    assert targets["visible"].all() and dataset.clipped == 0


def test_data_module_loaders(small_keypoints):
    module = KeypointDataModule(small_keypoints, batch_size=4, max_images={"calib": 6})
    module.prepare_data()
    module.setup()
    assert module.num_keypoints == 7 and module.keypoint_names[0] == "head"
    images, targets = next(iter(module.calib_dataloader()))
    assert images.shape == (4, 3, 64, 64) and targets["keypoints"].shape == (4, 7, 2)
    assert len(module.calib_dataloader().dataset) == 6
    assert len(module.train_dataloader()) == 2 and len(module.val_dataloader()) == 2
    assert len(module.test_dataloader()) == 2


def test_data_module_generates_the_default_data(tmp_path):
    module = KeypointDataModule(tmp_path / "gen", generate_default=True, splits=("calib",), batch_size=2,
                                generator_kwargs={"splits": {"calib": 3}})
    assert module.num_keypoints == 7  # generated on first use, also outside a Trainer
    images, targets = next(iter(module.calib_dataloader()))
    assert images.shape == (2, 3, 64, 64) and targets["visible"].shape == (2, 7)


def test_splits_must_share_the_keypoint_names(tmp_path):
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    anns = [annotation(1, 1, [5, 5, 20, 20], [10, 10, 2, 20, 20, 2])]
    write_keypoint_coco(tmp_path, "train", [(1, "a.png", pixels)], anns)
    write_keypoint_coco(tmp_path, "val", [(1, "a.png", pixels)], anns, names=["tail", "tip"])
    with pytest.raises(MalformedAnnotationError, match=r"split 'val' .*\['tail', 'tip'\].*split 'train'"):
        KeypointDataModule(tmp_path, splits=("train", "val")).setup()


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("keypoints, problem", [
    ([10, 10, 2, 20, 20], r"annotation id 7 has keypoints \[10, 10, 2, 20, 20\], need 6 values"),
    ([10, 10, 2, 20, 20, 3], r"annotation id 7 has keypoints .*v in \{0, 1, 2\}"),
    ([10, float("nan"), 2, 20, 20, 2], "annotation id 7 has keypoints .*finite numbers"),
    ("10 10 2", "annotation id 7 has keypoints '10 10 2'"),
])
def test_malformed_keypoints_name_the_file_and_annotation(tmp_path, keypoints, problem):
    ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "keypoints": keypoints,
           "num_keypoints": 2}
    ann_file = write_keypoint_coco(tmp_path, "train", [(1, "a.png", np.zeros((40, 40, 3), np.uint8))], [ann])
    with pytest.raises(MalformedAnnotationError, match=re.escape(str(ann_file)) + ".*" + problem):
        KeypointDataset(tmp_path / "images", ann_file)


def test_bad_num_keypoints_and_missing_keypoint_category_are_named(tmp_path):
    ann = annotation(3, 1, [5, 5, 20, 20], [10, 10, 2, 20, 20, 2], num_keypoints=-1)
    ann_file = write_keypoint_coco(tmp_path, "train", [(1, "a.png", np.zeros((40, 40, 3), np.uint8))], [ann])
    with pytest.raises(MalformedAnnotationError, match="annotation id 3 has num_keypoints -1"):
        KeypointDataset(tmp_path / "images", ann_file)
    data = json.loads(ann_file.read_text())
    del data["categories"][0]["keypoints"]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(MalformedAnnotationError, match="0 categories have a 'keypoints' list, need exactly one"):
        KeypointDataset(tmp_path / "images", ann_file)


def test_base_coco_validation_still_applies(tmp_path):
    ann = annotation(3, 2, [5, 5, 20, 20], [10, 10, 2, 20, 20, 2])
    ann_file = write_keypoint_coco(tmp_path, "train", [(1, "a.png", np.zeros((40, 40, 3), np.uint8))], [ann])
    with pytest.raises(MalformedAnnotationError, match="refers to image_id 2"):
        KeypointDataset(tmp_path / "images", ann_file)


def test_missing_root_annotation_and_image_files(tmp_path):
    with pytest.raises(DatasetRootNotFoundError, match=r"nowhere.*data\.generate_default=true"):
        KeypointDataModule(tmp_path / "nowhere").setup()
    ann = annotation(1, 1, [5, 5, 20, 20], [10, 10, 2, 20, 20, 2])
    write_keypoint_coco(tmp_path, "train", [(1, "a.png", np.zeros((40, 40, 3), np.uint8))], [ann])
    with pytest.raises(AnnotationFileNotFoundError, match=r"split 'calib' .*person_keypoints_calib\.json"):
        KeypointDataModule(tmp_path, splits=("train", "calib")).setup()
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(ImageFileNotFoundError, match=r"1 image file\(s\) listed in split 'train'.*a\.png"):
        KeypointDataModule(tmp_path, splits=("train",)).setup()


def test_empty_split_is_an_error(tmp_path):
    ann_file = write_keypoint_coco(tmp_path, "calib", [], [])
    with pytest.raises(EmptySplitError, match="lists no images"):
        KeypointDataset(tmp_path / "images", ann_file)
    ann_file = write_keypoint_coco(tmp_path, "calib", [(1, "a.png", np.zeros((40, 40, 3), np.uint8))],
                                   [annotation(1, 1, [5, 5, 20, 20], [0, 0, 0, 0, 0, 0])])
    with pytest.raises(EmptySplitError, match="no usable keypoint annotation"):
        KeypointDataset(tmp_path / "images", ann_file)

import json
import re

import pytest
import torch

from lightning_ptq.detection import (
    AnnotationFileNotFoundError, CocoDataModule, CocoDetectionDataset, DatasetRootNotFoundError,
    EmptySplitError, ImageFileNotFoundError, MalformedAnnotationError, UnreadableImageError, detection_collate,
    save_preview,
)

CATEGORIES = [{"id": 1, "name": "thing"}]


def test_dataset_items_have_documented_shapes_and_dtypes(small_dataset):
    dataset = CocoDetectionDataset(small_dataset / "images", small_dataset / "annotations/instances_train.json")
    assert len(dataset) == 8 and dataset.num_classes == 6
    assert dataset.class_names == ["circle", "square", "triangle", "plus", "ring", "star"]
    image, target = dataset[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["boxes"])
    assert isinstance(target["image_id"], int)
    boxes = target["boxes"]
    assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 128


def test_non_square_user_images_are_resized_with_their_boxes(user_coco):
    dataset = CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_train.json", image_size=128)
    assert dataset.class_names == ["cat", "dog"]  # sorted by category id: cat=3, dog=7
    assert dataset.skipped == {"crowd": 1, "degenerate": 1}
    image, target = dataset[0]  # 200 x 100 image: x scaled by 0.64, y by 1.28
    assert image.shape == (3, 128, 128)
    expected = torch.tensor([[20 * 0.64, 10 * 1.28, 60 * 0.64, 40 * 1.28], [64.0, 64.0, 128.0, 128.0]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [0, 1] and target["image_id"] == 10
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_given_category_order_sets_the_labels(user_coco):
    dataset = CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_train.json",
                                   category_ids=[7, 3])
    assert dataset.class_names == ["dog", "cat"]
    assert dataset[0][1]["labels"].tolist() == [1, 0]


def test_collate_stacks_images_and_keeps_targets(user_coco):
    dataset = CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_train.json", image_size=64)
    images, targets = detection_collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 64, 64)
    assert [t["image_id"] for t in targets] == [10, 11]


def test_data_module_loaders(small_dataset):
    module = CocoDataModule(small_dataset, batch_size=4, max_images={"calib": 6})
    module.prepare_data()
    module.setup()
    assert module.num_classes == 6 and module.class_names[0] == "circle"
    images, targets = next(iter(module.calib_dataloader()))
    assert images.shape == (4, 3, 128, 128) and len(targets) == 4
    assert len(module.calib_dataloader().dataset) == 6
    first_ids = [t["image_id"] for t in next(iter(module.test_dataloader()))[1]]
    assert first_ids == [t["image_id"] for t in next(iter(module.test_dataloader()))[1]]
    assert len(module.train_dataloader()) == 2 and len(module.val_dataloader()) == 2


def test_data_module_generates_the_default_data(tmp_path):
    module = CocoDataModule(tmp_path / "gen", generate_default=True, splits=("calib",), batch_size=2,
                            generator_kwargs={"splits": {"calib": 3}, "max_objects": 3})
    assert module.num_classes == 6  # generated on first use, also outside a Trainer
    images, targets = next(iter(module.calib_dataloader()))
    assert images.shape == (2, 3, 128, 128) and all(len(t["boxes"]) <= 3 for t in targets)


def test_no_root_means_the_default_data_at_its_own_place_and_a_named_root_is_only_read(tmp_path):
    module = CocoDataModule(None, default_root=tmp_path / "default", splits=("calib",), batch_size=2,
                            generator_kwargs={"splits": {"calib": 2}, "max_objects": 2})
    assert len(module.dataset("calib")) == 2 and (tmp_path / "default" / "meta.json").is_file()
    named = CocoDataModule(tmp_path / "mine", default_root=tmp_path / "default", splits=("calib",))
    with pytest.raises(DatasetRootNotFoundError, match=r"mine does not exist"):
        named.dataset("calib")
    assert not (tmp_path / "mine").exists()


def test_zero_size_boxes_are_skipped_counted_and_logged_and_negative_ones_refused(user_coco, coco_writer, caplog):
    anns = [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 1, 0, 5]},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5]}]
    coco_writer(user_coco, "val", [(10, "a.jpg", 200, 100)], anns, [{"id": 7, "name": "dog"}])
    with caplog.at_level("WARNING"):
        dataset = CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_val.json", split="val")
    assert dataset.skipped == {"crowd": 0, "degenerate": 1} and len(dataset[0][1]["boxes"]) == 1
    assert "split 'val'" in caplog.text and "1 box(es) of zero width or height" in caplog.text
    anns[0]["bbox"] = [30, 1, -20, 5]
    coco_writer(user_coco, "val", [(10, "a.jpg", 200, 100)], anns, [{"id": 7, "name": "dog"}])
    with pytest.raises(MalformedAnnotationError, match=r"annotation id 1 has bbox \[30, 1, -20, 5\], with a negative "
                                                       r"width or height"):
        CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_val.json")


def test_truncated_image_is_named_with_its_id(user_coco):
    dataset = CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_train.json", split="train")
    path = user_coco / "images" / dataset.coco.imgs[10]["file_name"]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UnreadableImageError, match=rf"{re.escape(str(path))} \(image id 10 of split 'train'.*is not a "
                                                   r"readable image"):
        dataset[0]


def test_splits_share_the_first_splits_label_mapping(user_coco, coco_writer):
    coco_writer(user_coco, "val", [(10, "a.jpg", 200, 100)],
                [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5]}],
                [{"id": 7, "name": "dog"}])  # only dog here: on its own it would get label 0
    module = CocoDataModule(user_coco, splits=("train", "val"))
    assert module.dataset("val")[0][1]["labels"].tolist() == [1]


def test_preview_writes_a_png(user_coco, tmp_path):
    dataset = CocoDetectionDataset(user_coco / "images", user_coco / "annotations/instances_train.json")
    path = save_preview(dataset, tmp_path / "preview.png", n=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- errors

def test_missing_root_says_how_to_set_or_generate_it(tmp_path):
    module = CocoDataModule(tmp_path / "nowhere")
    with pytest.raises(DatasetRootNotFoundError, match=r"nowhere.*data\.root=.*data\.generate_default=true"):
        module.setup()


def test_missing_annotation_file_names_the_split(user_coco):
    module = CocoDataModule(user_coco, splits=("train", "val", "calib"))
    with pytest.raises(AnnotationFileNotFoundError, match=r"split 'calib' .*instances_calib\.json"):
        module.setup()


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": [], "annotations": []}), r"missing or non-list key\(s\) \['categories'\]"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATEGORIES,
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}),
     r"annotation id 5 has bbox \[1, 2, 3\]"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATEGORIES,
                 "annotations": [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}]}),
     "refers to image_id 2"),
])
def test_malformed_json_names_the_file_and_problem(user_coco, content, problem):
    ann_file = user_coco / "annotations/instances_train.json"
    ann_file.write_text(content)
    with pytest.raises(MalformedAnnotationError, match=re.escape(str(ann_file)) + ".*" + problem):
        CocoDataModule(user_coco, splits=("train",)).setup()


def test_empty_split_names_split_and_file(user_coco, coco_writer):
    coco_writer(user_coco, "calib", [], [], CATEGORIES)
    module = CocoDataModule(user_coco, splits=("calib",))
    with pytest.raises(EmptySplitError, match=r"split 'calib' \(.*instances_calib\.json\) lists no images"):
        module.calib_dataloader()


def test_missing_image_file_is_named(user_coco):
    (user_coco / "images/sub/b.png").unlink()
    with pytest.raises(ImageFileNotFoundError, match=r"1 image file.*split 'train'.*sub/b\.png"):
        CocoDataModule(user_coco, splits=("train",)).setup()


def test_unconfigured_split_is_refused(user_coco):
    with pytest.raises(ValueError, match="data.splits"):
        CocoDataModule(user_coco, splits=("train",)).test_dataloader()

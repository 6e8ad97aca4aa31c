"""Data fixtures: a tiny hand-written COCO folder (the small generated dataset is in tests/conftest.py)."""
import json

import pytest
from PIL import Image

def write_coco(root, split, images, annotations, categories):
    """Write ``root/annotations/instances_<split>.json``; ``images`` is [(id, file_name, w, h)] and
    each image is also written as a grey PNG of that size under ``root/images``."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for _, file_name, width, height in images:
        path = root / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (128, 64, 32)).save(path)
    data = {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": annotations,
        "categories": categories,
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco_writer():
    """The :func:`write_coco` helper, for tests that build their own COCO folder."""
    return write_coco


@pytest.fixture
def user_coco(tmp_path):
    """A user COCO folder: two 200x100 images, categories with non-contiguous ids 3 and 7, one crowd
    and one zero-width annotation, split 'train' and 'val' sharing the same categories."""
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [20, 10, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [100, 50, 100, 50], "area": 5000, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 7, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
    ]
    images = [(10, "a.jpg", 200, 100), (11, "sub/b.png", 200, 100)]
    write_coco(tmp_path, "train", images, annotations, categories)
    write_coco(tmp_path, "val", images[:1], annotations[:2], categories)
    return tmp_path

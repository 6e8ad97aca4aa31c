"""A small generated classification dataset shared by the classification tests."""
import pytest

from lightning_ptq.classify import generate_classification_dataset

SPLITS = {"train": 40, "pool": 20, "test": 20}


@pytest.fixture(scope="session")
def small_classes(tmp_path_factory):
    """Generated shape-classification dataset, 4 / 2 / 2 images per class (default knobs, seed 0)."""
    return generate_classification_dataset(tmp_path_factory.mktemp("classes") / "data", splits=SPLITS)

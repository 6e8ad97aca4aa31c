"""Fixtures shared by all test folders."""
import pytest

from lightning_ptq.data import generate_detection_dataset

SMALL_SPLITS = {"train": 8, "calib": 8, "val": 8, "test": 8}


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Generated dataset with 8 images per split (default knobs, seed 0)."""
    return generate_detection_dataset(tmp_path_factory.mktemp("synthetic") / "data", splits=SMALL_SPLITS)

"""Fixtures shared by all test folders."""
import pytest
import torch
from torch import nn

from lightning_ptq.detection import generate_detection_dataset

SMALL_SPLITS = {"train": 8, "calib": 8, "val": 8, "test": 8}


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Generated dataset with 8 images per split (default knobs, seed 0)."""
    return generate_detection_dataset(tmp_path_factory.mktemp("synthetic") / "data", splits=SMALL_SPLITS)


NUM_CLASSES = 6


def _blobs(n: int, generator: torch.Generator, centres: torch.Tensor):
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return centres[labels] + torch.randn(n, centres.shape[1], generator=generator), labels


@pytest.fixture(scope="session")
def blobs_task():
    """A small trained ``nn.Sequential`` of stages on Gaussian blobs, with calibration and
    validation batches: enough for W2A3 quantization to cost real accuracy."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(NUM_CLASSES, 16, generator=g) * 1.2
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(16, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()),
        nn.Linear(64, NUM_CLASSES),
    )
    x, y = _blobs(4000, g, centres)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xv, yv = _blobs(1000, g, centres)
    xc, _ = _blobs(256, g, centres)
    return model, [(xc, torch.zeros(len(xc)))], [(xv[i:i + 250], yv[i:i + 250]) for i in range(0, 1000, 250)]

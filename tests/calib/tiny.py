"""A tiny conv net and calibration batches for the calibration tests (seeded, so every call gives
the same model and images)."""
import torch
from torch import nn


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


def tiny_batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.rand(4, 3, 12, 12) for _ in range(3)]

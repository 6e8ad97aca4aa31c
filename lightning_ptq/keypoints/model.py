"""The low-resolution integral keypoint model: no upsampling, no high-resolution heatmap.

    image [B, 3, S, S]
      -> backbone: 3 down-sampling blocks (3x3 conv stride 2 + BN + ReLU, then ``depths[i]``
         3x3 convs at that resolution), S -> S / 8 (the 8x8 grid of a 64x64 input)
      -> head: 1x1 conv + BN, sets the channel count of the features f
      -> fc: a fully connected layer over channels, applied at every cell (a 1x1 conv with one
         output per keypoint): cell logits [B, K, G, G]
      -> per-axis soft-argmax (:mod:`~lightning_ptq.keypoints.softargmax`), optionally compensated

``logits="cosine"`` (the seed's method): cell logits ``beta x cos(f, w_k)``. Normalising both
sides bounds the logits by ``beta`` and gives the fc input a fixed range ``[-1, 1]``, which also
suits a quantizer; beta sharpens the softmax (a fixed setting, or learned with ``learn_beta``).
``logits="linear"``: the plain ``w_k . f + b_k`` (the baseline). With a quantized ``fc`` the
cosine uses the quantized weight's norm, so FP and quantized models compute the same formula.

A finer grid (16x16 at 64x64) keeps the three blocks but gives the last ones stride 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core import UserError
from ..core.errors import ConfigError
from ..core.tree import first_non_finite_module
from .softargmax import grid_coordinates

LOGIT_KINDS = ("cosine", "linear")


class NonFiniteLogitsError(UserError, FloatingPointError):
    """The keypoint model produced NaN or inf."""


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class KeypointNet(nn.Module):
    """Integral keypoint regression on a ``grid x grid`` map of a ``image_size`` input.

    Args:
        num_keypoints: K.
        image_size: input side S (square crops).
        grid: side of the logit grid; ``S / grid`` must be 1, 2, 4 or 8 and ``grid >= 2``.
        widths, depths: channels of the three blocks, and extra stride-1 convs in each.
        head_channels: channels of f (the 1x1 head conv).
        logits: ``"cosine"`` (``beta x cos(f, w)``) or ``"linear"`` (``w . f + b``).
        beta: scale of the cosine logits, > 0.
        learn_beta: learn beta (as ``log beta``) with the rest of the network.
        compensate: compensate the soft-argmax bias (see ``softargmax``) in training and inference.
    """

    family = "keypoint"

    def __init__(self, num_keypoints: int, image_size: int = 64, grid: int = 8, widths=(16, 32, 64),
                 depths=(0, 1, 2), head_channels: int = 64, logits: str = "cosine", beta: float = 10.0,
                 learn_beta: bool = False, compensate: bool = False):
        super().__init__()
        check_keypoint_settings(image_size, grid, logits, beta)
        if num_keypoints < 1:
            raise ConfigError(f"num_keypoints={num_keypoints!r} must be >= 1.")
        if len(widths) != 3 or len(depths) != 3:
            raise ConfigError(f"widths={list(widths)} and depths={list(depths)} need one entry per block (3).")
        self.num_keypoints, self.image_size, self.grid = num_keypoints, image_size, grid
        self.logits, self.compensate = logits, compensate
        strided = round(math.log2(image_size // grid))  # the first `strided` blocks have stride 2
        blocks, cin = [], 3
        for i, (width, depth) in enumerate(zip(widths, depths)):
            layers = [_conv_bn_relu(cin, width, 2 if i < strided else 1)]
            layers += [_conv_bn_relu(width, width, 1) for _ in range(depth)]
            blocks.append(nn.Sequential(*layers))
            cin = width
        self.backbone = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels))
        self.fc = nn.Conv2d(head_channels, num_keypoints, 1, bias=logits == "linear")
        log_beta = torch.tensor(math.log(beta))
        if learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    @property
    def stride(self) -> float:
        return self.image_size / self.grid

    def cell_logits(self, images: torch.Tensor) -> torch.Tensor:
        f = self.head(self.backbone(images))
        if self.logits == "linear":
            return self.fc(f)
        weight = self.fc.weight_quant(self.fc.weight) if hasattr(self.fc, "weight_quant") else self.fc.weight
        w_norm = weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        cosine = self.fc(F.normalize(f, dim=1, eps=1e-6)) / w_norm[:, None, None]
        return self.beta * cosine

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"coords": [B, K, 2] (x, y) input pixels, "x_logits": [B, K, G], "y_logits": [B, K, G]}``."""
        coords, lx, ly = grid_coordinates(self.cell_logits(images), self.stride, self.compensate)
        return {"coords": coords, "x_logits": lx, "y_logits": ly}


def check_keypoint_settings(image_size: int, grid: int, logits: str, beta: float) -> None:
    """Raise :class:`ConfigError` naming the bad setting and what is allowed."""
    if logits not in LOGIT_KINDS:
        raise ConfigError(f"keypoint logits={logits!r} is unknown: choose one of {', '.join(LOGIT_KINDS)}.")
    if not beta > 0:
        raise ConfigError(f"keypoint.beta={beta!r} must be > 0 (it scales the cosine logits).")
    allowed = [image_size // 2 ** n for n in range(4) if image_size % 2 ** n == 0 and image_size // 2 ** n >= 2]
    if grid < 2 or grid not in allowed:
        raise ConfigError(
            f"keypoint grid={grid!r} is not possible for image_size={image_size}: the grid must be at least "
            f"2x2 and image_size / 2^n for n in 0..3 (three down-sampling blocks): one of {allowed}.")


def keypoint_loss(coords: torch.Tensor, target: dict, stride: float) -> torch.Tensor:
    """L1 distance in grid cells between predicted and annotated visible keypoints."""
    visible = target["visible"]
    error = (coords - target["keypoints"]).abs().sum(-1) / stride
    return (error * visible).sum() / visible.sum().clamp_min(1)


def check_finite(model: nn.Module, images: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteLogitsError` naming the first module with a NaN / inf output."""
    if all(torch.isfinite(t).all() for t in out.values()):
        return
    culprit = first_non_finite_module(model, images)
    raise NonFiniteLogitsError(
        f"the keypoint model's output holds NaN or inf; the first module with a non-finite output is "
        f"{culprit!r}. Check the input images and the model's weights (a diverged training run?).")

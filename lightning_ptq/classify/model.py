"""A small ResNet-style image classifier with BatchNorm (the classification benchmark's default).

``TinyResNet`` is an ``nn.Sequential`` of top-level stages, so a caller can run (and cache the
input of) one stage at a time: ``stem`` (3x3 conv, BN, ReLU), ``layer1`` .. ``layerN`` (each a
``nn.Sequential`` of :class:`BasicBlock`, the first block of every stage after the first with
stride 2), ``head`` (global average pool, flatten, linear). Every conv is followed directly by its
BN as a sibling child named ``bn`` after ``conv``, so conv+BN folding finds each pair. ReLUs are
not in-place (in-place activations break forward hooks that keep their inputs).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class ConvBN(nn.Sequential):
    """conv -> BN (-> ReLU when ``act``): children ``conv``, ``bn`` (and ``act``) in that order,
    so conv+BN folding finds the pair."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, act: bool = True):
        layers = OrderedDict(conv=nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), bn=nn.BatchNorm2d(c_out))
        if act:
            layers["act"] = nn.ReLU()
        super().__init__(layers)


class BasicBlock(nn.Module):
    """ResNet basic block: ``act(conv2(conv1(x)) + shortcut(x))`` with ``conv1`` a 3x3 conv+BN+ReLU
    (stride ``s``), ``conv2`` a 3x3 conv+BN, ``shortcut`` the identity, or a 1x1 conv+BN when the
    stride or width changes, and ``act`` the ReLU after the residual add."""

    def __init__(self, c_in: int, c_out: int, s: int = 1):
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, 3, s)
        self.conv2 = ConvBN(c_out, c_out, 3, 1, act=False)
        self.shortcut = ConvBN(c_in, c_out, 1, s, act=False) if s != 1 or c_in != c_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class TinyResNet(nn.Sequential):
    """``images float [B, 3, H, W] -> logits [B, num_classes]``; see the module docstring.

    ``widths``: channels of the stages (the stem has ``widths[0]``); ``depths``: basic blocks per
    stage (same length). Any input size works (global pooling); the default is meant for 32 x 32.
    """

    family = "classifier"  # model.name in the configs

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64), depths: Sequence[int] = (1, 1, 1)):
        widths, depths = list(widths), list(depths)
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError(f"TinyResNet: num_classes must be an int >= 2, got {num_classes!r}.")
        if not widths or len(widths) != len(depths):
            raise ValueError(f"TinyResNet: widths {widths} and depths {depths} must be non-empty and of the "
                             f"same length (one entry per stage).")
        if not all(isinstance(v, int) and v >= 1 for v in widths + depths):
            raise ValueError(f"TinyResNet: widths {widths} and depths {depths} must be positive ints.")
        stages = OrderedDict(stem=ConvBN(3, widths[0], 3, 1))
        c_in = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(c_in, width, 2 if i > 0 and j == 0 else 1))
                c_in = width
            stages[f"layer{i + 1}"] = nn.Sequential(*blocks)
        stages["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
        super().__init__(stages)
        self.num_classes, self.widths, self.depths = num_classes, tuple(widths), tuple(depths)

"""torchvision detectors the job builds from ``model._target_`` (no pretrained weights: the project
pretrains them on the data with torchvision's own losses): RetinaNet on a ResNet-18 FPN and
SSDlite on MobileNetV3-Large. Each *is* its :mod:`.torchvision_detectors` view, around a stock
torchvision model it builds."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.detection import RetinaNet, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from .fcos import IMAGE_MEAN, IMAGE_STD, STRIDES, resnet18_fpn
from .torchvision_detectors import TorchvisionRetinaNet, TorchvisionSSD


class RetinaNetR18(TorchvisionRetinaNet):
    """torchvision RetinaNet on a ResNet-18 FPN (levels P3-P7, random init), for square images of
    ``image_size``. Anchors as torchvision's (three scales, three aspect ratios per location), at
    twice each level's stride rather than four times: the default data's objects are small.

    The head is torchvision's ``RetinaNetHead`` with GroupNorm after each of its convolutions, as
    in torchvision's ``retinanet_resnet50_fpn_v2``: trained from random weights, the original head
    (no normalisation) collapsed on the default data (every image got the same scores; test mAP
    0.0001 after 8 epochs), while this one learns. ``head_norm=False`` builds the original head.

    Args:
        num_classes: object classes (sigmoid scores, no background class).
        image_size: side of the square input images, a multiple of 32.
        fpn_channels: width of the FPN and the head (a multiple of 32 with ``head_norm``).
        head_norm: GroupNorm (32 groups) in the head.
    """

    family = "retinanet_r18"

    def __init__(self, num_classes: int, image_size: int = 128, fpn_channels: int = 64, head_norm: bool = True):
        if head_norm and fpn_channels % 32:
            raise ValueError(f"fpn_channels={fpn_channels} must be a multiple of 32 for the head's GroupNorm "
                             f"(32 groups); or build the head without it (head_norm=False).")
        sizes = tuple((2 * s, int(2 * s * 2 ** (1 / 3)), int(2 * s * 2 ** (2 / 3))) for s in STRIDES)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=partial(nn.GroupNorm, 32) if head_norm else None)
        super().__init__(RetinaNet(resnet18_fpn(fpn_channels), num_classes, min_size=image_size, max_size=image_size,
                                   image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), anchor_generator=anchors,
                                   head=head))
        self.image_size = image_size


class SSDLite(TorchvisionSSD):
    """torchvision SSDlite320 on MobileNetV3-Large (random init; torchvision resizes every image to
    320 x 320). Its softmax has a background class 0, so the data's labels 0..C-1 are its classes
    1..C: shifted here, on the way in (loss) and out (detections)."""

    family = "ssdlite"

    def __init__(self, num_classes: int, image_size: int = 128):
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        super().__init__(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                                       norm_layer=norm))
        self.image_size = image_size

    def compute_loss(self, images, targets):
        return super().compute_loss(images, [{**t, "labels": t["labels"] + 1} for t in targets])

    @torch.no_grad()
    def postprocess(self, outputs, conf_thr=0.001, iou_thr=0.6, max_det=100):
        return [{**d, "labels": d["labels"] - 1} for d in super().postprocess(outputs, conf_thr, iou_thr, max_det)]

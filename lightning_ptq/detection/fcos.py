"""torchvision's FCOS with a ResNet-18 FPN backbone, as a network that ends at its raw outputs.

torchvision's :class:`~torchvision.models.detection.FCOS` normalises and resizes the images, runs
the network, makes anchors and then computes either the loss or the detections, all in one
``forward``. What we quantize must be the network alone, so :class:`FCOSNet` holds torchvision's
two parts — ``backbone`` (ResNet-18 + FPN, levels P3-P7) and ``head`` (:class:`FCOSHead`) — and
its ``forward`` is only normalise -> backbone -> head:

* ``net(images)`` -> ``{"cls": [B, A, C] class logits, "box": [B, A, 4] regression (distances
  from the anchor point to the four sides, in anchor sizes, after the head's ReLU), "ctr":
  [B, A, 1] centerness logits}`` over the A anchor points of the five levels, level by level;
* :meth:`FCOSNet.postprocess` scores, decodes and suppresses exactly as torchvision's FCOS does;
* :meth:`FCOSNet.torchvision_fcos` wraps the *same* backbone and head (shared, not copied) in
  torchvision's FCOS: in train mode with targets it gives torchvision's loss, which is how the
  network trains (:meth:`FCOSNet.compute_loss`); in eval mode its detections, the reference the
  tests compare :meth:`FCOSNet.postprocess` with.

Images have one fixed size (``image_size``), so the anchors are computed once, and torchvision's
transform is set up to change nothing but the normalisation that ``forward`` applies too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, clip_boxes_to_image
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

STRIDES = (8, 16, 32, 64, 128)  # P3 (from ResNet layer2) .. P7
# torchvision's detection defaults (ImageNet statistics) for images in [0, 1]: with BatchNorm in
# every backbone block, a rough centring and scaling is all the network needs.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
GROUP_NORM_GROUPS = 32  # torchvision's FCOS head normalises with GroupNorm(32, channels)


def resnet18_fpn(fpn_channels: int) -> BackboneWithFPN:
    """ResNet-18 (plain BatchNorm, random init, every layer trainable) with an FPN of width
    ``fpn_channels`` on layers 2-4 and P6/P7 from P5, as torchvision's ``fcos_resnet50_fpn`` wires
    its ResNet-50. (``resnet_fpn_backbone`` / ``_resnet_fpn_extractor`` fix the FPN width at 256;
    with all layers trainable they do nothing else than this.)"""
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    returned = {"layer2": "0", "layer3": "1", "layer4": "2"}
    in_channels = [body.get_submodule(name)[-1].conv2.out_channels for name in returned]
    return BackboneWithFPN(body, returned, in_channels, fpn_channels,
                           extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))


def anchor_generator() -> AnchorGenerator:
    """One square anchor per location and level, as large as the level's stride (torchvision's
    FCOS default): its centre is the FCOS point, its size the unit of the regression."""
    return AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))


def fcos_anchors(image_size: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Anchors [A, 4] xyxy px of an ``image_size`` square image, level by level as the head
    flattens its outputs, and the number of anchors per level.

    Every stride-2 convolution (kernel 3, padding 1) and the max-pool map n pixels to ceil(n / 2),
    so level ``s`` is ceil(image_size / s) wide; torchvision's generator does the rest.
    """
    sizes = [math.ceil(image_size / s) for s in STRIDES]
    images = ImageList(torch.zeros(1, 3, image_size, image_size), [(image_size, image_size)])
    features = [torch.zeros(1, 1, n, n) for n in sizes]
    return anchor_generator()(images, features)[0], tuple(n * n for n in sizes)


def detection_scores(cls_logits: torch.Tensor, ctr_logits: torch.Tensor) -> torch.Tensor:
    """FCOS's ranking score [..., C] = sqrt(sigmoid(cls) * sigmoid(ctr)), as torchvision computes it."""
    return torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits))


def score_logits(cls_logits: torch.Tensor, ctr_logits: torch.Tensor) -> torch.Tensor:
    """logit of :func:`detection_scores`, finite with finite gradients for any input.

    With a = sigmoid(cls), b = sigmoid(ctr), p = sqrt(ab): log p = (log a + log b) / 2 and
    1 - p = (1 - ab) / (1 + p) with 1 - ab = (1 - a) + a (1 - b), so every term is a log-sigmoid
    combined by ``logaddexp``: no 1 - p is ever formed, which would round to 0 for confident boxes.
    """
    log_p = 0.5 * (F.logsigmoid(cls_logits) + F.logsigmoid(ctr_logits))
    log_1m_ab = torch.logaddexp(F.logsigmoid(-cls_logits), F.logsigmoid(cls_logits) + F.logsigmoid(-ctr_logits))
    return log_p - log_1m_ab + torch.log1p(log_p.exp())


class FCOSNet(nn.Module):
    """torchvision FCOS on a ResNet-18 FPN: the network from normalisation to the head's outputs
    (see the module docstring). The head keeps torchvision's names (``head.classification_head``,
    ``head.regression_head``) and its GroupNorm, which stays float when the convs are quantized;
    the backbone's BatchNorms fold into their convs.

    Args:
        num_classes: object classes (no background class: FCOS scores each class with a sigmoid).
        image_size: side of the square input images, a multiple of 32 (torchvision's padding
            multiple, so its transform leaves the images as they are).
        fpn_channels: width of the FPN and the head, a multiple of 32 (the head's GroupNorm).
        num_convs: 3x3 conv + GroupNorm + ReLU blocks per head branch (torchvision: 4).
    """

    family = "fcos"
    head_patterns = ("head.classification_head.*", "head.regression_head.*")
    feature_modules = ("backbone.body.layer1", "backbone.body.layer2", "backbone.body.layer3", "backbone.body.layer4",
                       "backbone.fpn")

    def __init__(self, num_classes: int, image_size: int = 128, fpn_channels: int = 64, num_convs: int = 4):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1.")
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size={image_size} must be a positive multiple of 32 (torchvision pads to it).")
        if fpn_channels < GROUP_NORM_GROUPS or fpn_channels % GROUP_NORM_GROUPS:
            raise ValueError(f"fpn_channels={fpn_channels} must be a positive multiple of {GROUP_NORM_GROUPS} "
                             f"(the head's GroupNorm({GROUP_NORM_GROUPS}, channels)).")
        if num_convs < 1:
            raise ValueError(f"num_convs={num_convs} must be >= 1.")
        self.num_classes, self.image_size = num_classes, image_size
        self.backbone = resnet18_fpn(fpn_channels)
        self.head = FCOSHead(fpn_channels, num_anchors=1, num_classes=num_classes, num_convs=num_convs)
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        anchors, self.anchors_per_level = fcos_anchors(image_size)
        self.register_buffer("anchors", anchors, persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = list(self.backbone((images - self.image_mean) / self.image_std).values())
        out = self.head(features)
        return {"cls": out["cls_logits"], "box": out["bbox_regression"], "ctr": out["bbox_ctrness"]}

    def decode_boxes(self, box_regression: torch.Tensor) -> torch.Tensor:
        """Regression [B, A, 4] -> boxes [B, A, 4] xyxy px (torchvision's box coder, differentiable)."""
        return self.head.box_coder.decode(box_regression, self.anchors)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], conf_thr: float = 0.001, iou_thr: float = 0.6,
                    max_det: int = 100, topk_candidates: int = 1000) -> list[dict[str, torch.Tensor]]:
        """Raw outputs -> per image ``{"boxes" [N, 4] xyxy px, "scores" [N], "labels" [N]}``, as
        torchvision's ``FCOS.postprocess_detections`` computes them: every (anchor, class) score
        above ``conf_thr``, the best ``topk_candidates`` of each level, boxes decoded and clipped
        to the image, class-wise NMS at ``iou_thr``, the best ``max_det``. (Scores agree with
        torchvision's to float rounding: it applies the sigmoid level by level.)"""
        scores = detection_scores(outputs["cls"].float(), outputs["ctr"].float())
        boxes = clip_boxes_to_image(self.decode_boxes(outputs["box"].float()), (self.image_size, self.image_size))
        num_classes = scores.shape[-1]
        results = []
        for img_boxes, img_scores in zip(boxes, scores):
            flat_idx, cand_scores = self._candidates(img_scores, conf_thr, topk_candidates)
            cand_boxes, labels = img_boxes[flat_idx // num_classes], flat_idx % num_classes
            kept = batched_nms(cand_boxes, cand_scores, labels, iou_thr)[:max_det]
            results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept]})
        return results

    def _candidates(self, scores: torch.Tensor, conf_thr: float, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into ``scores`` [A, C] flattened and the scores of the candidates: above
        ``conf_thr``, the best ``topk`` per level, best first within a level (torchvision's order)."""
        indices, values, offset = [], [], 0
        for level in scores.split(self.anchors_per_level):
            flat = level.flatten()
            above = torch.where(flat > conf_thr)[0]
            top, order = flat[above].topk(min(topk, above.numel()))
            indices.append(above[order] + offset)
            values.append(top)
            offset += flat.numel()
        return torch.cat(indices), torch.cat(values)

    def adapter(self) -> FCOSAdapter:
        """What the filtered global loss reads these outputs through."""
        return FCOSAdapter(self)

    def torchvision_fcos(self, **postprocess_kwargs) -> FCOS:
        """torchvision's FCOS around this network's own ``backbone`` and ``head`` (the same
        modules: training it trains this network). Its transform does not resize (min_size =
        max_size = image_size) and normalises as :meth:`forward` does. ``postprocess_kwargs``:
        FCOS's ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates``."""
        return FCOS(self.backbone, self.num_classes, min_size=self.image_size, max_size=self.image_size,
                    image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), anchor_generator=anchor_generator(),
                    head=self.head, **postprocess_kwargs)

    def compute_loss(self, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """torchvision's FCOS loss on ``images`` [B, 3, H, W] and ``targets`` (``boxes`` xyxy px,
        ``labels``): focal loss on classes, GIoU on boxes, BCE on centerness, each per foreground
        point. Returns (their sum, the parts).

        The wrapper is new, hence in train mode (loss, not detections), while the shared modules
        keep their own mode: BatchNorm runs as this network's mode says."""
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        parts = self.torchvision_fcos()(list(images), targets)
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


class FCOSAdapter:
    """:class:`~lightning_ptq.calib.fgl.DetectorAdapter` of :class:`FCOSNet`: per anchor point the
    logits of the score FCOS ranks its boxes by (sigmoid of them = sqrt(sigmoid(cls) *
    sigmoid(ctr)), see :func:`score_logits`) and the decoded boxes, float and differentiable."""

    def __init__(self, model: FCOSNet):
        self.model = model  # read at call time: anchors follow the model to its device

    def __call__(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = score_logits(outputs["cls"].float(), outputs["ctr"].float())
        return logits, self.model.decode_boxes(outputs["box"].float())

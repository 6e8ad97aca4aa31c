"""A YOLOv8-style anchor-free detector: CSP (C2f) backbone, SPPF, FPN/PAN neck, decoupled heads.

The network itself ends at the last head convolutions; its output is raw logits, so every conv —
head included — can be quantized while everything after it stays float:

* ``model(images)`` -> ``{"cls": [B, A, C] class logits, "box": [B, A, 4 * reg_max] DFL logits}``
  over the A anchor points of the three levels (strides 8, 16, 32), concatenated level by level;
* :func:`decode_boxes` turns DFL logits into boxes (softmax over the ``reg_max`` bins of each side,
  expectation = distance in strides from the anchor point);
* :func:`postprocess` (also :meth:`YOLO.postprocess`) applies sigmoid, score threshold and
  torchvision's batched NMS.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import batched_nms

STRIDES = (8, 16, 32)


class ConvBNAct(nn.Module):
    """conv -> BN -> SiLU. Children in this order so conv+BN folding finds the pair."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3)
        self.cv2 = ConvBNAct(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block of YOLOv8: split, a chain of bottlenecks on one half, concat every stage, fuse."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNAct(c_in, 2 * self.c, 1)
        self.blocks = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))
        self.cv2 = ConvBNAct((2 + n) * self.c, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).chunk(2, dim=1))
        for block in self.blocks:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)
        self.cv2 = ConvBNAct(hidden * 4, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, dim=1))


class DetectHead(nn.Module):
    """Decoupled head: per level a box branch (-> 4 * reg_max DFL logits) and a class branch."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, reg_max: int, image_size: int):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        c_box = max(16, channels[0] // 4, 4 * reg_max)
        c_cls = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, c_box, 3), ConvBNAct(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1))
            for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, c_cls, 3), ConvBNAct(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1))
            for c in channels
        )
        # Start near the right answer (as YOLOv8 does): low class prior (~5 objects per image over
        # all cells), equal box-bin logits.
        for box, cls, stride in zip(self.box, self.cls, STRIDES):
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, math.log(5 / num_classes / (image_size / stride) ** 2))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls = [c(f).flatten(2) for c, f in zip(self.cls, feats)]  # [B, C, H*W] per level
        box = [b(f).flatten(2) for b, f in zip(self.box, feats)]
        return {"cls": torch.cat(cls, 2).transpose(1, 2), "box": torch.cat(box, 2).transpose(1, 2)}


class YOLO(nn.Module):
    """YOLOv8-style detector. ``width_mult`` / ``depth_mult`` scale YOLOv8's channels (64..1024)
    and block counts (3, 6, 6, 3) as the n/s/m variants do (nano: 0.25 / 0.33)."""

    family = "yolo"
    head_patterns = ("head.*",)  # every conv of the decoupled heads (class and DFL box branches)
    # backbone stages and neck outputs: where feature matching (calib.features) compares
    feature_modules = ("stem", "stage3", "stage4", "stage5", "top_down4", "top_down3", "bottom_up4", "bottom_up5")

    def __init__(self, num_classes: int, width_mult: float = 0.25, depth_mult: float = 0.33,
                 reg_max: int = 8, image_size: int = 128, max_channels: int = 1024):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1.")
        if reg_max < 2:
            raise ValueError(f"reg_max={reg_max} must be >= 2 (bins of the box distribution).")
        if image_size % STRIDES[-1]:
            raise ValueError(f"image_size={image_size} must be a multiple of {STRIDES[-1]} (the largest stride).")
        self.num_classes, self.reg_max, self.image_size = num_classes, reg_max, image_size
        w = [max(8, int(min(c, max_channels) * width_mult) // 8 * 8) for c in (64, 128, 256, 512, 1024)]
        d = [max(1, round(n * depth_mult)) for n in (3, 6, 6, 3)]
        self.stem = nn.Sequential(ConvBNAct(3, w[0], 3, 2), ConvBNAct(w[0], w[1], 3, 2), C2f(w[1], w[1], d[0], True))
        self.stage3 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C2f(w[2], w[2], d[1], True))  # P3, stride 8
        self.stage4 = nn.Sequential(ConvBNAct(w[2], w[3], 3, 2), C2f(w[3], w[3], d[2], True))  # P4, stride 16
        self.stage5 = nn.Sequential(ConvBNAct(w[3], w[4], 3, 2), C2f(w[4], w[4], d[3], True), SPPF(w[4], w[4]))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(w[4] + w[3], w[3], d[3])
        self.top_down3 = C2f(w[3] + w[2], w[2], d[3])
        self.down3 = ConvBNAct(w[2], w[2], 3, 2)
        self.bottom_up4 = C2f(w[2] + w[3], w[3], d[3])
        self.down4 = ConvBNAct(w[3], w[3], 3, 2)
        self.bottom_up5 = C2f(w[3] + w[4], w[4], d[3])
        self.head = DetectHead((w[2], w[3], w[4]), num_classes, reg_max, image_size)
        anchors, anchor_strides = make_anchors(image_size)
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("anchor_strides", anchor_strides, persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p3 = self.stage3(self.stem(x))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        t4 = self.top_down4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top_down3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
        return self.head([n3, n4, n5])

    def postprocess(self, outputs: dict[str, torch.Tensor], conf_thr: float = 0.001, iou_thr: float = 0.6,
                    max_det: int = 100) -> list[dict[str, torch.Tensor]]:
        """Raw outputs -> per image boxes, scores and labels: :func:`postprocess` with this model's anchors."""
        return postprocess(outputs, self.anchors, self.anchor_strides, self.reg_max, conf_thr, iou_thr, max_det)

    def adapter(self) -> YOLOAdapter:
        """What the filtered global loss reads these outputs through."""
        return YOLOAdapter(self)

    def compute_loss(self, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """YOLOv8's training loss (:class:`~lightning_ptq.detection.yolo_loss.YOLOLoss`) on ``images``
        and ``targets`` (``boxes`` xyxy px, ``labels``): (total, parts)."""
        from .yolo_loss import YOLOLoss  # yolo_loss imports this module (decode_boxes)

        return YOLOLoss(self.reg_max)(self(images), targets, self.anchors, self.anchor_strides)


def make_anchors(image_size: int, strides=STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points [A, 2] (x, y cell centres in pixels) and their strides [A, 1], level by level."""
    points, strides_out = [], []
    for stride in strides:
        n = image_size // stride
        coords = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], 1))
        strides_out.append(torch.full((n * n, 1), float(stride)))
    return torch.cat(points), torch.cat(strides_out)


def dfl_distances(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """[..., 4 * reg_max] DFL logits -> [..., 4] expected (left, top, right, bottom) in strides."""
    probs = box_logits.float().unflatten(-1, (4, reg_max)).softmax(-1)
    return probs @ torch.arange(reg_max, dtype=probs.dtype, device=probs.device)


def decode_boxes(box_logits: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor, reg_max: int) -> torch.Tensor:
    """DFL logits [B, A, 4 * reg_max] -> boxes [B, A, 4] xyxy in pixels."""
    ltrb = dfl_distances(box_logits, reg_max) * strides
    return torch.cat([anchors - ltrb[..., :2], anchors + ltrb[..., 2:]], -1)


@torch.no_grad()
def postprocess(outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor, reg_max: int,
                conf_thr: float = 0.001, iou_thr: float = 0.6, max_det: int = 100,
                max_candidates: int = 3000) -> list[dict[str, torch.Tensor]]:
    """Raw outputs -> per image ``{"boxes" [N, 4] xyxy px, "scores" [N], "labels" [N]}``.

    Every (anchor, class) pair above ``conf_thr`` is a candidate (multi-label, as COCO-style
    evaluation of YOLO does); the best ``max_candidates`` go through class-wise NMS.
    """
    boxes = decode_boxes(outputs["box"], anchors, strides, reg_max)
    scores = outputs["cls"].float().sigmoid()
    num_classes = scores.shape[-1]
    results = []
    for img_boxes, img_scores in zip(boxes, scores):
        flat = img_scores.flatten()
        keep = (flat > conf_thr).nonzero().squeeze(1)
        if keep.numel() > max_candidates:
            keep = keep[flat[keep].topk(max_candidates).indices]
        anchor_idx, labels = keep // num_classes, keep % num_classes
        cand_boxes, cand_scores = img_boxes[anchor_idx], flat[keep]
        kept = batched_nms(cand_boxes, cand_scores, labels, iou_thr)[:max_det]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept]})
    return results


class YOLOAdapter:
    """:class:`~lightning_ptq.calib.fgl.DetectorAdapter` of :class:`YOLO`: class logits and
    DFL-decoded boxes (float, differentiable) per anchor point."""

    def __init__(self, model: YOLO):
        self.model = model  # read at call time: anchors follow the model to its device

    def __call__(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        return outputs["cls"], decode_boxes(outputs["box"], m.anchors, m.anchor_strides, m.reg_max)

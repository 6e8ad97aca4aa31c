"""YOLOv8's training loss: task-aligned assignment, BCE on classes, CIoU and DFL on boxes.

The assigner (TOOD's task-aligned assigner, as YOLOv8 uses it) is written here because no library
ships it; IoU and the CIoU loss come from torchvision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, complete_box_iou_loss

from .yolo import decode_boxes


def pad_targets(targets: list[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """List of per-image targets -> labels [B, M], boxes [B, M, 4], valid mask [B, M] (M = most boxes)."""
    m = max([len(t["labels"]) for t in targets] + [1])
    labels = torch.zeros(len(targets), m, dtype=torch.long, device=device)
    boxes = torch.zeros(len(targets), m, 4, device=device)
    valid = torch.zeros(len(targets), m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        labels[i, :n], boxes[i, :n], valid[i, :n] = t["labels"], t["boxes"], True
    return labels, boxes, valid


@torch.no_grad()
def task_aligned_assign(scores: torch.Tensor, pred_boxes: torch.Tensor, anchors: torch.Tensor,
                        gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor,
                        topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
    """For each anchor, the ground truth it learns from (TOOD / YOLOv8).

    An anchor is a candidate for a box when its centre lies inside it; among those, the ``topk``
    with the highest alignment ``score^alpha * IoU^beta`` become positives; an anchor claimed by
    several boxes keeps the one it overlaps most. Shapes: ``scores`` [B, A, C] (sigmoid),
    ``pred_boxes`` [B, A, 4] xyxy, ``anchors`` [A, 2], ``gt_*`` [B, M(, 4)].

    Returns target boxes [B, A, 4], soft class targets [B, A, C] (one-hot scaled by the
    normalised alignment, so the best-aligned anchor of each box gets its IoU) and the
    foreground mask [B, A].
    """
    b, a, c = scores.shape
    m = gt_labels.shape[1]
    lt = anchors[None, None] - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - anchors[None, None]
    inside = torch.cat([lt, rb], -1).amin(-1) > eps  # [B, M, A]
    candidate = inside & gt_valid[:, :, None]

    overlaps = torch.stack([box_iou(g, p) for g, p in zip(gt_boxes, pred_boxes)]).clamp_(0)  # [B, M, A]
    cls_scores = scores.gather(2, gt_labels[:, None, :].expand(b, a, m)).transpose(1, 2)  # [B, M, A]
    align = cls_scores.pow(alpha) * overlaps.pow(beta) * candidate

    top = align.topk(min(topk, a), dim=-1).indices  # [B, M, k]
    positive = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate & (align > 0)

    # An anchor claimed by several boxes keeps the one with the highest IoU.
    multi = positive.sum(1, keepdim=True) > 1
    best = F.one_hot((overlaps * candidate).argmax(1), m).transpose(1, 2).bool()  # [B, M, A]
    positive = torch.where(multi, best & candidate, positive)
    fg = positive.any(1)  # [B, A]
    gt_index = positive.float().argmax(1)  # [B, A]

    target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(b, a, 4))
    target_labels = gt_labels.gather(1, gt_index)
    align = align * positive
    norm = (align * overlaps.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + eps)).amax(1)  # [B, A]
    target_scores = F.one_hot(target_labels, c).float() * (norm * fg)[..., None]
    return target_boxes, target_scores, fg


def dfl_loss(box_logits: torch.Tensor, target_ltrb: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss: cross-entropy to the two bins around each target distance,
    weighted by proximity. ``box_logits`` [N, 4 * reg_max], ``target_ltrb`` [N, 4] in strides.
    Returns [N] (mean over the four sides)."""
    target = target_ltrb.clamp(0, reg_max - 1 - 0.01)
    left = target.long()
    w_left = (left + 1) - target
    logits = box_logits.unflatten(-1, (4, reg_max)).flatten(0, 1)
    loss = (F.cross_entropy(logits, left.flatten(), reduction="none") * w_left.flatten()
            + F.cross_entropy(logits, left.flatten() + 1, reduction="none") * (1 - w_left.flatten()))
    return loss.view(-1, 4).mean(-1)


class YOLOLoss:
    """``loss(outputs, targets, anchors, strides) -> (total, parts)``: the parts weighted with
    YOLOv8's gains (box 7.5, cls 0.5, dfl 1.5), each normalised by the sum of class targets."""

    def __init__(self, reg_max: int, box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5,
                 topk: int = 10):
        self.reg_max, self.topk = reg_max, topk
        self.gains = {"box": box_gain, "cls": cls_gain, "dfl": dfl_gain}

    def __call__(self, outputs: dict[str, torch.Tensor], targets: list[dict], anchors: torch.Tensor,
                 strides: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cls_logits, box_logits = outputs["cls"], outputs["box"]
        pred_boxes = decode_boxes(box_logits, anchors, strides, self.reg_max)
        gt_labels, gt_boxes, gt_valid = pad_targets(targets, cls_logits.device)
        target_boxes, target_scores, fg = task_aligned_assign(
            cls_logits.detach().sigmoid(), pred_boxes.detach(), anchors, gt_labels, gt_boxes, gt_valid, self.topk)
        score_sum = target_scores.sum().clamp_min(1.0)

        parts = {"cls": F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum") / score_sum}
        if fg.any():
            weight = target_scores.sum(-1)[fg]
            parts["box"] = (complete_box_iou_loss(pred_boxes[fg], target_boxes[fg], reduction="none")
                            * weight).sum() / score_sum
            anchor_xy = anchors.expand_as(pred_boxes[..., :2])[fg]
            stride = strides.expand(fg.shape[0], -1, -1)[fg]
            target_ltrb = torch.cat([anchor_xy - target_boxes[fg][:, :2], target_boxes[fg][:, 2:] - anchor_xy], -1) / stride
            parts["dfl"] = (dfl_loss(box_logits[fg], target_ltrb, self.reg_max) * weight).sum() / score_sum
        else:
            parts["box"] = parts["dfl"] = box_logits.sum() * 0.0
        total = sum(self.gains[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}

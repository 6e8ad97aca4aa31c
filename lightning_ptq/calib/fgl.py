"""Filtered global loss (FGL) of regression-aware calibration (Reg-PTQ, CVPR 2024).

The FP teacher and the quantized student see the same images. Most of a detector's anchors are
background, and the teacher's boxes there are noise: distilling them wastes the calibration on
boxes nobody keeps. FGL looks at two sets of anchors: those the teacher is confident about (max
class score > ``conf_thr``) and those where the student's box already overlaps the teacher's
(IoU > ``iou_thr``). The loss is a classification term (BCE of the student's logits against the
teacher's scores) plus ``lambda_reg`` times a box term (GIoU or scale-normalised L1 between
student and teacher boxes) on the kept anchors.

Two readings of the source differ, so both are settings. The published paper (Reg-PTQ, the
default) keeps the *intersection* of the two sets and filters only the box term, the class term
covering every anchor (``combine="intersection", filter_cls=False``). The patent keeps their
*union* and filters both terms (``combine="union", filter_cls=True``); on the default detector
at W4A4 that lost 4 to 5 points: without a class term on background anchors their scores drift
up and add false positives.

"Joint" calibration (the patent's 联合校准) adds ``lambda_local`` times a dense output-
reconstruction term (:class:`OutputMSE` over the raw outputs): the filtered terms say which boxes
matter, the dense term keeps the rest of the output (and hence the NMS ranking of background
anchors) from drifting while the scales move. ``lambda_local=0`` gives the filtered loss alone.

The loss reaches the model's outputs only through a :class:`DetectorAdapter`, so any detector
that can say "these are my per-anchor class logits and boxes" can use it.
"""
from __future__ import annotations

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from .config import FGLConfig
from .losses import OutputMSE

log = logging.getLogger(__name__)



class DetectorAdapter(Protocol):
    """What FGL needs from a detector's raw outputs (implement it for your model).

    ``__call__(outputs)`` returns ``(class_logits [B, A, C], boxes [B, A, 4])`` over the same A
    anchors (or points) for teacher and student: logits before the sigmoid, boxes xyxy in pixels
    decoded in float and differentiable with respect to the outputs.
    """

    def __call__(self, outputs) -> tuple[torch.Tensor, torch.Tensor]: ...


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for boxes ``[..., 4]`` xyxy (torchvision only has all pairs)."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]).clamp_min(0) * (x[..., 3] - x[..., 1]).clamp_min(0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


class FilteredGlobalLoss:
    """``(student_out, teacher_out) -> (loss, parts)``; see the module docstring. The settings are
    an :class:`FGLConfig` (``config``) or its fields as keywords.

    A batch in which no anchor survives the filter falls back to every anchor (with a warning) and
    is counted in ``fallback_batches``.
    """

    name = "fgl"

    def __init__(self, adapter: DetectorAdapter, config: FGLConfig | None = None, **settings):
        if config is not None and settings:
            raise TypeError(f"FilteredGlobalLoss: give config or the settings {sorted(settings)}, not both.")
        config = config if config is not None else FGLConfig.from_dict(settings)
        self.adapter, self.conf_thr, self.iou_thr = adapter, float(config.conf_thr), float(config.iou_thr)
        self.lambda_reg, self.reg_loss = float(config.lambda_reg), config.reg_loss
        self.lambda_local, self._local = float(config.lambda_local), OutputMSE()
        self.combine, self.filter_cls = config.combine, bool(config.filter_cls)
        self.fallback_batches = 0

    def __call__(self, student_out, teacher_out) -> tuple[torch.Tensor, dict[str, float]]:
        s_logits, s_boxes = self.adapter(student_out)
        with torch.no_grad():
            t_logits, t_boxes = self.adapter(teacher_out)
            t_scores = t_logits.float().sigmoid()
            confident = t_scores.amax(-1) > self.conf_thr
            overlapping = paired_iou(s_boxes.detach(), t_boxes) > self.iou_thr
            keep = confident | overlapping if self.combine == "union" else confident & overlapping
        if not keep.any():
            self.fallback_batches += 1
            log.warning("FGL: no box passed the filter (conf_thr=%s, iou_thr=%s) in this batch; using all "
                        "boxes for it (%d such batches so far).", self.conf_thr, self.iou_thr, self.fallback_batches)
            keep = torch.ones_like(keep)
        cls_keep = keep if self.filter_cls else torch.ones_like(keep)
        cls = F.binary_cross_entropy_with_logits(s_logits[cls_keep].float(), t_scores[cls_keep])
        reg = self._reg(s_boxes[keep].float(), t_boxes[keep].float())
        loss = cls + self.lambda_reg * reg
        parts = {"cls": cls.item(), "reg": reg.item(), "kept": float(keep.sum()),
                 "fallback_batches": float(self.fallback_batches)}
        if self.lambda_local > 0:
            local, _ = self._local(student_out, teacher_out)
            loss = loss + self.lambda_local * local
            parts["local"] = local.item()
        return loss, parts

    def _reg(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.reg_loss == "giou":
            return generalized_box_iou_loss(s, t, reduction="mean")
        size = (t[:, 2:] - t[:, :2]).clamp_min(1.0).repeat(1, 2)  # L1 relative to the teacher box size
        return ((s - t).abs() / size).mean()

"""Distillation losses between the float teacher's and the quantized student's outputs.

A loss takes ``(student_out, teacher_out)`` (any nesting of tensors, tuples, lists and dicts, as
the model returns it) and returns ``(loss, parts)`` where ``parts`` maps names to floats for
logging. The regression-aware detector loss plugs in with the same signature.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from ..core import UserError
from ..core.tree import flatten_tensors


class NotDistillableError(UserError, TypeError):
    """A distillation loss was given outputs it cannot compare element by element."""


HOW_TO_DISTIL = (
    "Distil the raw head outputs instead (the tensors before decoding, score thresholds and NMS, whose shapes do "
    "not depend on what was detected): pass forward_fn=lambda model, batch: <the network up to its head>(images). "
    "For a stock torchvision FCOS or RetinaNet, lightning_ptq.detection.detector_of(model) is a module that returns "
    "them, with the adapter the filtered global loss reads; RegPTQCallback uses it for you; your own detector "
    "implements the Detector protocol (README, 'Your own detector').")


def _looks_like_detections(out) -> bool:
    return (isinstance(out, (list, tuple)) and bool(out) and isinstance(out[0], dict)
            and {"boxes", "scores"} <= set(out[0]))


def check_distillable(student_out, teacher_out) -> None:
    """:class:`NotDistillableError` unless both outputs are the same structure of tensors of the
    same shapes: post-processed detections (per-image boxes, scores, labels of varying number)
    or non-tensor values cannot be compared element by element (doing it anyway pairs unrelated
    boxes and silently ruins the calibration)."""
    if _looks_like_detections(student_out) or _looks_like_detections(teacher_out):
        raise NotDistillableError(
            "The distillation loss got post-processed detections (per image a dict of boxes, scores and labels, "
            "whose number varies): comparing them element by element pairs unrelated boxes. " + HOW_TO_DISTIL)
    s_leaves, s_spec = tree_flatten(student_out)
    t_leaves, t_spec = tree_flatten(teacher_out)
    odd = [type(x).__name__ for x in (*s_leaves, *t_leaves) if not isinstance(x, torch.Tensor)]
    if odd:
        raise NotDistillableError(f"The distillation loss got outputs holding non-tensor values ({sorted(set(odd))}); it "
                                  f"compares tensors. " + HOW_TO_DISTIL)
    if s_spec != t_spec or any(s.shape != t.shape for s, t in zip(s_leaves, t_leaves)):
        shapes = lambda leaves: [tuple(x.shape) for x in leaves][:6]  # noqa: E731
        raise NotDistillableError(
            f"The student's and the teacher's outputs differ in structure or shape (student {shapes(s_leaves)}, "
            f"teacher {shapes(t_leaves)}): variable-length outputs cannot be compared element by element. "
            + HOW_TO_DISTIL)


class OutputMSE:
    """Mean squared error over every output tensor, each divided by the teacher's variance so that
    outputs on different scales (class logits, box logits) weigh the same."""

    name = "output_mse"

    def __call__(self, student_out, teacher_out) -> tuple[torch.Tensor, dict[str, float]]:
        s_list, t_list = flatten_tensors(student_out), flatten_tensors(teacher_out)
        if len(s_list) != len(t_list) or not s_list:
            raise ValueError(
                f"student and teacher outputs differ in structure ({len(s_list)} vs {len(t_list)} tensors)."
            )
        terms = [
            (s.float() - t.float()).pow(2).mean() / t.float().var().clamp_min(1e-8)
            for s, t in zip(s_list, t_list)
        ]
        loss = torch.stack(terms).mean()
        return loss, {f"mse_{i}": term.item() for i, term in enumerate(terms)}

"""Distillation losses between the float teacher's and the quantized student's outputs.

A loss takes ``(student_out, teacher_out)`` (any nesting of tensors, tuples, lists and dicts, as
the model returns it) and returns ``(loss, parts)`` where ``parts`` maps names to floats for
logging. The regression-aware detector loss plugs in with the same signature.
"""
from __future__ import annotations

import torch

from ..core.tree import flatten_tensors


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

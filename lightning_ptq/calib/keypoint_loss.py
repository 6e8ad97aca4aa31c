"""The calibration loss of the keypoint model: the quantized student matches the float teacher's
coordinates and its per-axis distributions (no labels needed)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class KeypointDistillLoss:
    """``lambda_coord x L1(coords) / stride + lambda_dist x KL(teacher || student)`` summed over the
    x and y distributions; same signature as :class:`~lightning_ptq.calib.OutputMSE`."""

    name = "keypoint_distill"

    def __init__(self, stride: float, lambda_coord: float = 1.0, lambda_dist: float = 1.0):
        if lambda_coord < 0 or lambda_dist < 0 or lambda_coord + lambda_dist == 0:
            raise ValueError(f"lambda_coord={lambda_coord!r} and lambda_dist={lambda_dist!r} must be >= 0, "
                             f"not both 0.")
        self.stride, self.lambda_coord, self.lambda_dist = stride, lambda_coord, lambda_dist

    def __call__(self, student_out: dict, teacher_out: dict) -> tuple[torch.Tensor, dict[str, float]]:
        coord = (student_out["coords"] - teacher_out["coords"]).abs().mean() / self.stride
        dist = sum(
            F.kl_div(student_out[key].float().log_softmax(-1), teacher_out[key].float().log_softmax(-1),
                     log_target=True, reduction="none").sum(-1).mean()
            for key in ("x_logits", "y_logits"))
        loss = self.lambda_coord * coord + self.lambda_dist * dist
        return loss, {"coord_l1": coord.item(), "axis_kl": dist.item()}

"""A distillation loss given what it cannot compare element by element stops with the fix,
instead of silently pairing unrelated detections (what a user hit with post-processed outputs)."""
import pytest
import torch
from torch import nn

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize
from lightning_ptq.calib import NotDistillableError, check_distillable


def _detections(n):
    return [{"boxes": torch.rand(n, 4), "scores": torch.rand(n), "labels": torch.zeros(n, dtype=torch.long)}]


def test_raw_outputs_pass():
    out = {"cls": torch.rand(2, 10, 3), "box": torch.rand(2, 10, 4)}
    check_distillable(out, {k: v + 1 for k, v in out.items()})


@pytest.mark.parametrize("student, teacher, match", [
    (_detections(3), _detections(5), r"post-processed detections \(per image a dict of boxes, scores and labels"),
    ((torch.rand(2, 3), "meta"), (torch.rand(2, 3), "meta"), r"non-tensor values \(\['str'\]\)"),
    ((torch.rand(2, 3),), (torch.rand(2, 4),), r"differ in structure or shape \(student \[\(2, 3\)\], teacher \[\(2, 4\)\]\)"),
])
def test_what_cannot_be_distilled_is_named_with_the_fix(student, teacher, match):
    with pytest.raises(NotDistillableError, match=match) as err:
        check_distillable(student, teacher)
    assert "Distil the raw head outputs instead" in str(err.value) and "forward_fn=" in str(err.value)


class PostProcessing(nn.Module):
    """A network whose forward ends in detections of a data-dependent number."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x):
        scores = self.conv(x).flatten(1)
        return [{"boxes": torch.rand(int((s > 0).sum()), 4), "scores": s[s > 0]} for s in scores]


def test_calibrate_stops_before_learning_on_post_processed_outputs():
    torch.manual_seed(0)
    fp = PostProcessing().eval()
    with pytest.raises(NotDistillableError, match="post-processed detections"):
        calibrate(fp, quantize(fp, QuantConfig(w_bits=8, a_bits=8)), [torch.rand(2, 3, 8, 8) for _ in range(3)],
                  CalibConfig(steps=5), trainer_kwargs={"enable_progress_bar": False})

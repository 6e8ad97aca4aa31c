"""Filtered global loss: which anchors it keeps, its value against a hand computation, fallback,
gradients, bad settings, and the YOLO adapter."""
import logging

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from lightning_ptq.calib import FilteredGlobalLoss, OutputMSE, paired_iou
from lightning_ptq.detection import YOLO, YOLOAdapter, decode_boxes
from lightning_ptq.quant import ConfigError


PATENT = {"combine": "union", "filter_cls": True}  # the patent's filter (the defaults are the paper's)


def identity(outputs):
    """Adapter for outputs that already are (class logits, boxes)."""
    return outputs


def _logit(p):
    return torch.logit(torch.tensor(p))


def _case():
    # Anchor 0: teacher confident. Anchor 1: teacher unsure, student box overlaps well.
    # Anchor 2: teacher unsure, student box far off. Anchor 3: teacher unsure, student box close-ish.
    t_logits = torch.stack([_logit([0.9, 0.1]), _logit([0.2, 0.1]), _logit([0.1, 0.05]), _logit([0.25, 0.2])])[None]
    t_boxes = torch.tensor([[[10.0, 10, 30, 30], [40, 40, 60, 60], [0, 0, 10, 10], [20, 20, 40, 40]]])
    s_logits = t_logits + torch.tensor([[0.5, -0.3]])
    s_boxes = torch.tensor([[[12.0, 10, 30, 32], [41, 40, 60, 61], [50, 50, 60, 60], [25, 25, 45, 45]]])
    return s_logits, s_boxes, t_logits, t_boxes


def test_paired_iou_is_the_diagonal_of_torchvision_box_iou():
    a, b = torch.rand(7, 2) * 50, torch.rand(7, 2) * 50
    boxes_a, boxes_b = torch.cat([a, a + torch.rand(7, 2) * 30 + 1], 1), torch.cat([b, b + torch.rand(7, 2) * 30 + 1], 1)
    torch.testing.assert_close(paired_iou(boxes_a, boxes_b), box_iou(boxes_a, boxes_b).diagonal())


def test_keeps_confident_or_overlapping_anchors_and_matches_hand_computation():
    s_logits, s_boxes, t_logits, t_boxes = _case()
    loss_fn = FilteredGlobalLoss(identity, conf_thr=0.5, iou_thr=0.5, lambda_reg=2.0, **PATENT)
    loss, parts = loss_fn((s_logits, s_boxes), (t_logits, t_boxes))
    keep = torch.tensor([0, 1])  # anchor 3: IoU (25..40)^2=225 / (400+400-225) < 0.5
    cls = F.binary_cross_entropy_with_logits(s_logits[0, keep], t_logits[0, keep].sigmoid())
    reg = generalized_box_iou_loss(s_boxes[0, keep], t_boxes[0, keep], reduction="mean")
    torch.testing.assert_close(loss, cls + 2.0 * reg)
    assert parts["kept"] == 2 and parts["cls"] == pytest.approx(cls.item()) and parts["reg"] == pytest.approx(reg.item())


def test_paper_variant_intersects_the_filters_and_keeps_every_anchor_in_the_class_term():
    s_logits, s_boxes, t_logits, t_boxes = _case()
    loss_fn = FilteredGlobalLoss(identity, conf_thr=0.5, iou_thr=0.5, combine="intersection", filter_cls=False)
    loss, parts = loss_fn((s_logits, s_boxes), (t_logits, t_boxes))
    keep = torch.tensor([0])  # confident and overlapping: anchor 0 only (IoU 0.82)
    cls = F.binary_cross_entropy_with_logits(s_logits[0], t_logits[0].sigmoid())  # all four anchors
    reg = generalized_box_iou_loss(s_boxes[0, keep], t_boxes[0, keep], reduction="mean")
    torch.testing.assert_close(loss, cls + reg)
    assert parts["kept"] == 1


def test_gradients_reach_only_the_kept_anchors():
    s_logits, s_boxes, t_logits, t_boxes = _case()
    s_logits.requires_grad_(True)
    s_boxes.requires_grad_(True)
    loss, _ = FilteredGlobalLoss(identity, conf_thr=0.5, iou_thr=0.5, **PATENT)((s_logits, s_boxes), (t_logits, t_boxes))
    loss.backward()
    assert s_logits.grad[0, :2].abs().sum() > 0 and s_logits.grad[0, 2:].eq(0).all()
    assert s_boxes.grad[0, :2].abs().sum() > 0 and s_boxes.grad[0, 2:].eq(0).all()


def test_lambda_local_adds_the_dense_output_mse_over_every_anchor():
    s_logits, s_boxes, t_logits, t_boxes = _case()
    student, teacher = (s_logits, s_boxes), (t_logits, t_boxes)
    filtered, _ = FilteredGlobalLoss(identity, conf_thr=0.5, iou_thr=0.5)(student, teacher)
    joint, parts = FilteredGlobalLoss(identity, conf_thr=0.5, iou_thr=0.5, lambda_local=0.7)(student, teacher)
    dense, _ = OutputMSE()(student, teacher)  # includes anchors 2 and 3, which the filter drops
    torch.testing.assert_close(joint, filtered + 0.7 * dense)
    assert parts["local"] == pytest.approx(dense.item()) and dense > 0


def test_l1_box_term_is_relative_to_teacher_box_size():
    s_logits, s_boxes, t_logits, t_boxes = _case()
    loss_fn = FilteredGlobalLoss(identity, conf_thr=0.5, iou_thr=0.5, lambda_reg=1.0, reg_loss="l1", **PATENT)
    _, parts = loss_fn((s_logits, s_boxes), (t_logits, t_boxes))
    # kept anchors 0 and 1: teacher boxes are 20 px wide and high.
    expected = (s_boxes[0, :2] - t_boxes[0, :2]).abs().div(20.0).mean()
    assert parts["reg"] == pytest.approx(expected.item())


def test_batch_with_no_surviving_box_falls_back_to_all_and_is_counted(caplog):
    s_logits, s_boxes, t_logits, t_boxes = _case()
    loss_fn = FilteredGlobalLoss(identity, conf_thr=0.99, iou_thr=1.0, **PATENT)
    with caplog.at_level(logging.WARNING):
        _, parts = loss_fn((s_logits, s_boxes), (t_logits, t_boxes))
        loss_fn((s_logits, s_boxes), (t_logits, t_boxes))
    assert parts["kept"] == 4 and loss_fn.fallback_batches == 2
    assert "no box passed the filter" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    ({"conf_thr": 1.5}, r"conf_thr=1.5 must lie in \[0, 1\]"),
    ({"iou_thr": -0.1}, r"iou_thr=-0.1 must lie in \[0, 1\]"),
    ({"lambda_reg": -1}, r"lambda_reg=-1 must be >= 0"),
    ({"lambda_local": -0.5}, r"lambda_local=-0.5 must be >= 0"),
    ({"reg_loss": "iou"}, r"reg_loss='iou' is unknown: choose one of giou, l1"),
    ({"combine": "or"}, r"combine='or' is unknown: choose one of union, intersection"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FilteredGlobalLoss(identity, **kwargs)


def test_yolo_adapter_decodes_boxes_differentiably():
    model = YOLO(num_classes=3, width_mult=0.125, image_size=64).eval()
    out = model(torch.rand(1, 3, 64, 64))
    logits, boxes = YOLOAdapter(model)(out)
    assert logits is out["cls"]
    torch.testing.assert_close(boxes, decode_boxes(out["box"], model.anchors, model.anchor_strides, model.reg_max))
    boxes.sum().backward()
    assert model.head.box[0][-1].weight.grad.abs().sum() > 0

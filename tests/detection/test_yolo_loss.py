"""YOLOv8 loss parts: task-aligned assignment, DFL, and a loss that trains."""
import torch
import torch.nn.functional as F

from lightning_ptq.detection import YOLO, YOLOLoss, dfl_loss, make_anchors, task_aligned_assign
from lightning_ptq.detection.yolo_loss import pad_targets


def _assign(gt_boxes, gt_labels, pred_boxes=None, scores=None, topk=10, num_classes=3, image_size=64):
    anchors, _ = make_anchors(image_size)
    a = len(anchors)
    if pred_boxes is None:  # every anchor predicts a 12 px box around itself
        pred_boxes = torch.cat([anchors - 6, anchors + 6], 1)[None]
    if scores is None:
        scores = torch.full((1, a, num_classes), 0.5)
    labels, boxes, valid = pad_targets([{"boxes": torch.tensor(gt_boxes), "labels": torch.tensor(gt_labels)}], "cpu")
    return anchors, task_aligned_assign(scores, pred_boxes, anchors, labels, boxes, valid, topk=topk)


def test_pad_targets_marks_padding_invalid():
    labels, boxes, valid = pad_targets([{"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 2])},
                                        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], "cpu")
    assert labels.tolist() == [[1, 2], [0, 0]] and valid.tolist() == [[True, True], [False, False]]
    assert boxes.shape == (2, 2, 4)


def test_positives_lie_inside_their_box_and_number_at_most_topk():
    anchors, (target_boxes, target_scores, fg) = _assign([[10.0, 10.0, 40.0, 34.0]], [2], topk=4)
    inside = (anchors[:, 0] > 10) & (anchors[:, 0] < 40) & (anchors[:, 1] > 10) & (anchors[:, 1] < 34)
    assert fg[0].sum() == 4
    assert inside[fg[0]].all()
    assert (target_boxes[0, fg[0]] == torch.tensor([10.0, 10.0, 40.0, 34.0])).all()
    # Only the box's class gets a target; the best-aligned anchor's target is its IoU.
    assert target_scores[0, :, :2].eq(0).all() and target_scores[0, ~fg[0]].eq(0).all()
    pred = torch.cat([anchors - 6, anchors + 6], 1)
    best_iou = max(_iou(pred[i], torch.tensor([10.0, 10.0, 40.0, 34.0])) for i in fg[0].nonzero().flatten())
    assert torch.isclose(target_scores[0, :, 2].max(), best_iou, atol=1e-5)


def _iou(a, b):
    inter = (torch.min(a[2:], b[2:]) - torch.max(a[:2], b[:2])).clamp(min=0).prod()
    area = lambda x: (x[2:] - x[:2]).prod()  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_an_anchor_claimed_by_two_boxes_keeps_the_one_it_overlaps_most():
    # Both boxes contain the anchor at (20, 20); the predicted box there equals the small one.
    anchors, _ = make_anchors(64)
    pred = torch.cat([anchors - 6, anchors + 6], 1)[None]
    idx = int(((anchors - torch.tensor([20.0, 20.0])).abs().sum(1)).argmin())
    pred[0, idx] = torch.tensor([14.0, 14.0, 26.0, 26.0])
    _, (target_boxes, _, fg) = _assign([[2.0, 2.0, 60.0, 60.0], [14.0, 14.0, 26.0, 26.0]], [0, 1], pred_boxes=pred)
    assert fg[0, idx]
    assert target_boxes[0, idx].tolist() == [14.0, 14.0, 26.0, 26.0]


def test_no_ground_truth_means_no_foreground():
    anchors, _ = make_anchors(64)
    labels, boxes, valid = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], "cpu")
    pred = torch.cat([anchors - 6, anchors + 6], 1)[None]
    _, scores, fg = task_aligned_assign(torch.rand(1, len(anchors), 3), pred, anchors, labels, boxes, valid)
    assert not fg.any() and scores.eq(0).all()


def test_dfl_loss_matches_two_bin_cross_entropy():
    logits = torch.randn(5, 4 * 8)
    target = torch.rand(5, 4) * 6.5
    left = target.floor().long()
    w = left + 1 - target
    log_p = logits.view(5, 4, 8).log_softmax(-1)
    expected = -(log_p.gather(-1, left[..., None])[..., 0] * w + log_p.gather(-1, left[..., None] + 1)[..., 0] * (1 - w))
    torch.testing.assert_close(dfl_loss(logits, target, 8), expected.mean(-1))


def test_dfl_loss_is_lowest_at_the_target_distribution():
    target = torch.tensor([[2.25, 0.5, 5.0, 3.75]])
    left = target.floor().long()
    probs = F.one_hot(left, 8) * (left + 1 - target)[..., None] + F.one_hot(left + 1, 8) * (target - left)[..., None]
    best = dfl_loss(probs.clamp_min(1e-6).log().flatten(1), target, 8)
    other = dfl_loss((probs.clamp_min(1e-6).log() + 0.5 * torch.randn(1, 4, 8)).flatten(1), target, 8)
    assert best < other


def test_loss_goes_down_when_fitting_one_batch():
    torch.manual_seed(0)
    model = YOLO(num_classes=2, width_mult=0.125, image_size=64)
    loss_fn = YOLOLoss(model.reg_max)
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 30.0, 50.0, 60.0], [2.0, 2.0, 14.0, 12.0]]), "labels": torch.tensor([0, 1])}]
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(25):
        loss, parts = loss_fn(model(images), targets, model.anchors, model.anchor_strides)
        assert set(parts) == {"cls", "box", "dfl"} and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

"""The YOLO detector: output layout, box decoding, post-processing and mAP evaluation."""
import pytest
import torch
from torch import nn

from lightning_ptq.detection import YOLO, decode_boxes, detect, dfl_distances, evaluate_detections, make_anchors, postprocess


def test_output_layout_covers_three_strides():
    model = YOLO(num_classes=5, image_size=64).eval()
    out = model(torch.rand(2, 3, 64, 64))
    anchors = 8 * 8 + 4 * 4 + 2 * 2
    assert out["cls"].shape == (2, anchors, 5)
    assert out["box"].shape == (2, anchors, 4 * model.reg_max)
    assert model.anchors.shape == (anchors, 2)
    assert model.anchor_strides[:64].eq(8).all() and model.anchor_strides[-4:].eq(32).all()


def test_every_conv_ends_in_a_module_the_quantizer_can_swap():
    # The head's last layers are plain nn.Conv2d children, not functional calls: quantizable.
    model = YOLO(num_classes=3, image_size=64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.head.cls[0][-1] in convs and model.head.box[2][-1] in convs


@pytest.mark.parametrize("bad, match", [
    (dict(num_classes=0), "num_classes=0"), (dict(num_classes=3, reg_max=1), "reg_max=1"),
    (dict(num_classes=3, image_size=100), "image_size=100"),
])
def test_bad_arguments_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        YOLO(**bad)


def test_make_anchors_are_cell_centres():
    points, strides = make_anchors(64)
    assert points[0].tolist() == [4.0, 4.0] and points[1].tolist() == [12.0, 4.0]
    assert points[64].tolist() == [8.0, 8.0] and strides[64].item() == 16


def _peaked_logits(distances: torch.Tensor, reg_max: int, peak: float = 30.0) -> torch.Tensor:
    """DFL logits [..., 4 * reg_max] whose softmax puts (almost) all mass on integer ``distances``."""
    one_hot = torch.nn.functional.one_hot(distances.long(), reg_max).float()
    return (one_hot * peak).flatten(-2)


def test_dfl_expectation_matches_a_manual_softmax_mean():
    logits = torch.randn(3, 4 * 6)
    expected = torch.stack([
        (logits[i].view(4, 6).softmax(-1) * torch.arange(6.0)).sum(-1) for i in range(3)
    ])
    torch.testing.assert_close(dfl_distances(logits, 6), expected)


def test_decode_boxes_turns_distances_into_xyxy_pixels():
    anchors, strides = torch.tensor([[12.0, 20.0], [24.0, 24.0]]), torch.tensor([[8.0], [16.0]])
    dist = torch.tensor([[[1, 2, 3, 0], [0, 1, 1, 2]]])
    boxes = decode_boxes(_peaked_logits(dist, 8), anchors, strides, 8)
    torch.testing.assert_close(boxes, torch.tensor([[[4.0, 4.0, 36.0, 20.0], [24.0, 8.0, 40.0, 56.0]]]))


class OracleDetector(nn.Module):
    """Outputs that decode exactly to given boxes at given anchors (high score), nothing elsewhere."""

    def __init__(self, image_size: int, num_classes: int, reg_max: int = 8):
        super().__init__()
        self.reg_max, self.num_classes = reg_max, num_classes
        anchors, strides = make_anchors(image_size)
        self.register_buffer("anchors", anchors)
        self.register_buffer("anchor_strides", strides)
        self.dummy = nn.Parameter(torch.zeros(()))
        self.plan: list[list[tuple[int, list[int], int]]] = []  # per image: (anchor, ltrb, label)

    def forward(self, images):
        a = len(self.anchors)
        cls = torch.full((len(images), a, self.num_classes), -20.0)
        box = torch.zeros(len(images), a, 4 * self.reg_max)
        for i, dets in enumerate(self.plan):
            for anchor, ltrb, label in dets:
                cls[i, anchor, label] = 5.0
                box[i, anchor] = _peaked_logits(torch.tensor(ltrb), self.reg_max)
        return {"cls": cls, "box": box}

    def postprocess(self, outputs, conf_thr=0.001, iou_thr=0.6, max_det=100):
        return postprocess(outputs, self.anchors, self.anchor_strides, self.reg_max, conf_thr, iou_thr, max_det)


def _box(model, anchor, ltrb):
    (x, y), s = model.anchors[anchor].tolist(), model.anchor_strides[anchor].item()
    l, t, r, b = (v * s for v in ltrb)
    return [x - l, y - t, x + r, y + b]


def test_postprocess_keeps_one_of_two_duplicates_but_both_of_different_classes():
    model = OracleDetector(64, num_classes=3)
    # anchors 9 and 10 are neighbours at stride 8: the same box from both, once per class pair.
    model.plan = [[(9, [1, 1, 2, 2], 0), (10, [2, 1, 1, 2], 0), (27, [1, 1, 1, 1], 2)],
                  [(9, [1, 1, 2, 2], 0), (10, [2, 1, 1, 2], 1)]]
    dets = postprocess(model(torch.zeros(2, 3, 64, 64)), model.anchors, model.anchor_strides, 8,
                       conf_thr=0.5, iou_thr=0.6)
    assert sorted(dets[0]["labels"].tolist()) == [0, 2]
    assert sorted(dets[1]["labels"].tolist()) == [0, 1]
    assert dets[0]["scores"].min() > 0.99
    dets = postprocess(model(torch.zeros(2, 3, 64, 64)), model.anchors, model.anchor_strides, 8,
                       conf_thr=0.5, iou_thr=0.6, max_det=1)
    assert [len(d["boxes"]) for d in dets] == [1, 1]


def _loader(images, boxes_per_image, labels_per_image):
    return [(images, [{"boxes": torch.tensor(b), "labels": torch.tensor(l)}
                      for b, l in zip(boxes_per_image, labels_per_image)])]


def test_evaluate_detections_is_one_for_perfect_and_lower_for_shifted_boxes():
    model = OracleDetector(64, num_classes=2)
    model.plan = [[(9, [1, 1, 2, 2], 0), (27, [1, 2, 1, 1], 1)]]
    truth = [[_box(model, 9, [1, 1, 2, 2]), _box(model, 27, [1, 2, 1, 1])]]
    images = torch.zeros(1, 3, 64, 64)
    perfect = evaluate_detections(model, _loader(images, truth, [[0, 1]]), progress=False)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)

    shifted = [[[v + 3 for v in truth[0][0]], truth[0][1]]]
    worse = evaluate_detections(model, _loader(images, shifted, [[0, 1]]), progress=False)
    assert 0.4 < worse["map"] < 0.95


def test_detect_restores_training_mode_and_runs_on_a_real_model():
    model = YOLO(num_classes=2, image_size=64).train()
    dets = detect(model, torch.rand(2, 3, 64, 64), conf_thr=0.0, max_det=7)
    assert model.training
    assert [len(d["boxes"]) for d in dets] == [7, 7]
    assert all(d["boxes"].shape == (7, 4) and d["labels"].max() < 2 for d in dets)

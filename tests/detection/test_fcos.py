"""torchvision FCOS as a quantizable network: output layout, post-processing against torchvision's
own FCOS, the FGL adapter, training with torchvision's loss, checkpoints and quantization."""
import copy
from fnmatch import fnmatchcase

import pytest
import torch
from torch import nn

from lightning_ptq.calib import FilteredGlobalLoss, calibrate_ranges
from lightning_ptq.detection import (
    YOLO, CheckpointMismatchError, DetectorModule, FCOSNet, build_detector, detect, detection_scores,
    load_detector, save_detector, score_logits,
)
from lightning_ptq.quant import ConfigError, QuantConfig, quantize, quantized_layers
from lightning_ptq.quant.fold import find_conv_bn_pairs
from lightning_ptq.quant.laq import LogAffineQuantizer

SIZE, CLASSES = 64, 3
KWARGS = {"fpn_channels": 32, "num_convs": 2}
ANCHORS = 8 * 8 + 4 * 4 + 2 * 2 + 1 + 1  # P3..P7 of a 64 px image (P6 and P7 are both 1 x 1)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return FCOSNet(CLASSES, image_size=SIZE, **KWARGS).eval()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, SIZE, SIZE)


def _targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [36.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([0, 2])},
            {"boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]), "labels": torch.tensor([1])}]


def test_output_layout_and_anchors(net, images):
    out = net(images)
    assert out["cls"].shape == (2, ANCHORS, CLASSES)
    assert out["box"].shape == (2, ANCHORS, 4) and out["ctr"].shape == (2, ANCHORS, 1)
    assert net.anchors.shape == (ANCHORS, 4) and net.anchors_per_level == (64, 16, 4, 1, 1)
    # one stride-sized square per point, centred on the grid (torchvision's FCOS anchors)
    assert net.anchors[0].tolist() == [-4.0, -4.0, 4.0, 4.0] and net.anchors[1].tolist() == [4.0, -4.0, 12.0, 4.0]
    assert "anchors" not in net.state_dict() and "image_mean" not in net.state_dict()


@pytest.mark.parametrize("bad, match", [
    (dict(num_classes=0), "num_classes=0"), (dict(num_classes=3, image_size=100), "image_size=100"),
    (dict(num_classes=3, fpn_channels=48), r"fpn_channels=48 must be a positive multiple of 32"),
    (dict(num_classes=3, num_convs=0), "num_convs=0"),
])
def test_bad_arguments_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        FCOSNet(**bad)


def _spread_scores(net: FCOSNet) -> None:
    """Random head outputs at init are all alike; spread them so ranking and NMS have work to do."""
    torch.manual_seed(2)
    with torch.no_grad():
        for conv in (net.head.classification_head.cls_logits, net.head.regression_head.bbox_ctrness,
                     net.head.regression_head.bbox_reg):
            conv.weight.normal_(std=0.3)


@pytest.mark.parametrize("conf_thr, iou_thr, max_det, topk", [(0.05, 0.6, 100, 1000), (0.2, 0.5, 10, 15)])
def test_postprocess_equals_torchvision_fcos(net, images, conf_thr, iou_thr, max_det, topk):
    """Same weights, same images: our raw outputs + postprocess give torchvision's detections
    (per-level top-k included). Scores agree to float rounding only: torchvision applies the
    sigmoid level by level, and the vectorised kernel rounds a slice's tail differently."""
    _spread_scores(net)
    reference = net.torchvision_fcos(score_thresh=conf_thr, nms_thresh=iou_thr, detections_per_img=max_det,
                                     topk_candidates=topk).eval()
    with torch.no_grad():
        expected = reference(list(images))
    ours = net.postprocess(net(images), conf_thr=conf_thr, iou_thr=iou_thr, max_det=max_det, topk_candidates=topk)
    assert [len(d["boxes"]) for d in ours] == [len(d["boxes"]) for d in expected]
    assert all(len(d["boxes"]) > 1 for d in ours)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got["labels"], want["labels"], rtol=0, atol=0)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-4)


def test_detect_uses_the_models_own_postprocess(net, images):
    net.train()
    dets = detect(net, images, conf_thr=0.0, max_det=7)
    assert net.training
    assert [d["boxes"].shape for d in dets] == [(7, 4), (7, 4)]
    assert all(((d["boxes"] >= 0) & (d["boxes"] <= SIZE)).all() for d in dets)  # clipped to the image


def test_adapter_scores_are_the_ranking_scores_and_boxes_the_decoded_ones(net, images):
    _spread_scores(net)
    out = net(images)
    logits, boxes = net.adapter()(out)
    torch.testing.assert_close(logits.sigmoid(), detection_scores(out["cls"], out["ctr"]))
    torch.testing.assert_close(boxes, net.head.box_coder.decode(out["box"], net.anchors))


def test_score_logits_are_exact_and_finite_at_the_extremes():
    values = torch.tensor([-200.0, -15.0, -3.0, 0.0, 2.0, 15.0, 200.0])
    cls, ctr = (t.reshape(-1).clone().requires_grad_() for t in torch.meshgrid(values, values, indexing="ij"))
    logits = score_logits(cls, ctr)
    logits.sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(cls.grad).all() and torch.isfinite(ctr.grad).all()
    c, t = cls.detach().double(), ctr.detach().double()
    moderate = (c.abs() <= 15) & (t.abs() <= 15)  # where float64 forms 1 - p accurately enough
    p = torch.sqrt(torch.sigmoid(c) * torch.sigmoid(t))
    torch.testing.assert_close(logits.detach().double()[moderate], torch.logit(p)[moderate], rtol=1e-5, atol=1e-5)
    assert logits[(c == 200) & (t == 200)].item() > 100  # confident boxes stay confident, no inf


def test_fgl_gradients_reach_every_head_output_layer(net, images):
    student = copy.deepcopy(net)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
        teacher_out = net(images)
    loss, parts = FilteredGlobalLoss(net.adapter(), conf_thr=0.0)(student(images), teacher_out)
    loss.backward()
    assert parts["kept"] > 0
    cls_head, reg_head = student.head.classification_head, student.head.regression_head
    for layer in (cls_head.cls_logits, reg_head.bbox_reg, reg_head.bbox_ctrness):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_training_with_torchvision_loss_shares_weights_and_lowers_the_loss(net, images):
    fcos = net.torchvision_fcos()
    assert fcos.backbone is net.backbone and fcos.head is net.head
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, parts = net.compute_loss(images, _targets())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert losses[-1] < 0.8 * losses[0]
    net.eval()
    net.compute_loss(images, _targets())
    assert not net.training and not net.backbone.body.bn1.training  # the loss leaves the mode alone


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer: logging is a no-op
def test_detector_module_trains_fcos(images):
    module = DetectorModule(CLASSES, SIZE, KWARGS, target="lightning_ptq.detection.FCOSNet")
    assert isinstance(module.model, FCOSNet)
    loss = module.training_step((images, _targets()), 0)
    assert loss.requires_grad and torch.isfinite(loss)


def test_checkpoint_round_trip(net, images, tmp_path):
    path = save_detector(net, tmp_path / "fcos.pt", KWARGS, ["a", "b", "c"])
    assert torch.load(path, weights_only=True)["format"] == "lightning_ptq.fcos/1"
    loaded = load_detector(path, CLASSES, SIZE, {}, FCOSNet).eval()
    torch.testing.assert_close(loaded(images), net(images))


def test_checkpoint_of_the_other_family_is_named(net, tmp_path):
    yolo = YOLO(CLASSES, width_mult=0.125, image_size=SIZE)
    yolo = save_detector(yolo, tmp_path / "yolo.pt", {"width_mult": 0.125}, ["a", "b", "c"])
    with pytest.raises(CheckpointMismatchError, match=r"holds another detector \(lightning_ptq\.detection\.yolo\.YOLO, "
                                                      r"format 'lightning_ptq\.yolo/1'\) but model\._target_ is "
                                                      r"lightning_ptq\.detection\.fcos\.FCOSNet \(family 'fcos'\)"):
        load_detector(yolo, CLASSES, SIZE, KWARGS, FCOSNet)
    fcos = save_detector(net, tmp_path / "fcos.pt", KWARGS, ["a", "b", "c"])
    with pytest.raises(CheckpointMismatchError, match=r"holds another detector .* but model\._target_ is .*YOLO"):
        load_detector(fcos, CLASSES, SIZE, {}, YOLO)
    torch.save(net.state_dict(), tmp_path / "bare.pt")  # a bare state_dict: only the weights can tell
    with pytest.raises(CheckpointMismatchError, match=r"does not fit the configured detector \(model\._target_=.*YOLO"):
        load_detector(tmp_path / "bare.pt", CLASSES, SIZE, {}, YOLO)


def test_unknown_architecture_keys_and_classes_are_named():
    with pytest.raises(ConfigError, match=r"model\.kwargs has unknown keys \['width_mult'\] for "
                                          r"model\._target_=lightning_ptq\.detection\.fcos\.FCOSNet: "
                                          r"allowed are \['fpn_channels', 'num_convs'\]"):
        build_detector(FCOSNet, CLASSES, SIZE, {"width_mult": 0.25})
    with pytest.raises(ConfigError, match=r"model\._target_='my_pkg\.DETR' is not a class that can be imported"):
        build_detector("my_pkg.DETR", CLASSES, SIZE, {})


def test_quantize_folds_backbone_batchnorm_keeps_groupnorm_and_calibrates(net, images):
    pairs = dict(find_conv_bn_pairs(net))
    for conv in ("backbone.body.conv1", "backbone.body.layer1.0.conv2", "backbone.body.layer3.0.downsample.0"):
        assert conv in pairs
    # (min/max weight ranges: the default MSE search over ResNet-18's 11.7 M weights takes ~30 s)
    cfg = QuantConfig(w_bits=4, a_bits=4, w_init="minmax")
    qmodel = quantize(net, cfg, example_input=images)  # example_input: folding is checked numerically
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in qmodel.modules()) == 2 * KWARGS["num_convs"]
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(quantized_layers(qmodel)) == sorted(convs)
    calibrate_ranges(qmodel, [images], progress=False)
    dets = detect(qmodel, images, conf_thr=0.0, max_det=5)  # methods and buffers survive the deep copy
    assert [len(d["boxes"]) for d in dets] == [5, 5]


def test_head_patterns_of_the_fcos_family_select_the_head(net):
    qmodel = quantize(net, QuantConfig(w_bits=4, a_bits=4, laq_patterns=("@head",)))
    layers = quantized_layers(qmodel)
    head = {n for n in layers if any(fnmatchcase(n, p) for p in FCOSNet.head_patterns)}
    assert head == {n for n in layers if n.startswith("head.")}
    assert {"head.classification_head.cls_logits", "head.regression_head.bbox_reg",
            "head.regression_head.bbox_ctrness"} <= head
    assert all(isinstance(layers[n].weight_quant, LogAffineQuantizer) for n in head)
    assert not any(isinstance(l.weight_quant, LogAffineQuantizer) for n, l in layers.items() if n not in head)

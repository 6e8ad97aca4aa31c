"""Stock torchvision FCOS and RetinaNet seen as Detectors: the view shares the model's modules, its
raw outputs, anchors and decoded boxes are torchvision's, and its detections are torchvision's own."""
import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lightning_ptq import QuantConfig, quantize, quantized_layers
from lightning_ptq.calib import FilteredGlobalLoss
from lightning_ptq.core.detector import NotADetectorError
from lightning_ptq.detection import TorchvisionFCOS, TorchvisionRetinaNet, detector_of
from lightning_ptq.detection.fcos import detection_scores

CLASSES, SIZE = 3, 64


def _backbone():
    body = resnet18(weights=None)
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 32,
                           extra_blocks=LastLevelP6P7(32, 32))


def _fcos():
    torch.manual_seed(0)
    return FCOS(_backbone(), CLASSES, min_size=SIZE, max_size=SIZE).eval()


def _retinanet():
    torch.manual_seed(0)
    anchors = AnchorGenerator(tuple((s,) for s in (16, 32, 64, 128, 256)), ((0.5, 1.0, 2.0),) * 5)
    return RetinaNet(_backbone(), CLASSES, min_size=SIZE, max_size=SIZE, anchor_generator=anchors).eval()


# images of another size than the model's: torchvision resizes them, detections come back in their pixels
IMAGES = torch.rand(2, 3, 48, 56, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("build, view", [(_fcos, TorchvisionFCOS), (_retinanet, TorchvisionRetinaNet)])
def test_detections_are_torchvisions_own(build, view):
    model = build()
    # low enough for a random model's scores (RetinaNet's class prior starts them at 0.01)
    model.score_thresh, model.nms_thresh, model.detections_per_img = 0.005, 0.5, 50
    detector = detector_of(model)
    assert isinstance(detector, view) and detector.backbone is model.backbone and detector.head is model.head
    with torch.no_grad():
        want = model(list(IMAGES))
        got = detector.postprocess(detector(IMAGES), conf_thr=0.005, iou_thr=0.5, max_det=50)
    assert len(got) == 2 and sum(len(d["scores"]) for d in want) > 0
    for g, w in zip(got, want):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], w[key])


def test_adapter_scores_and_boxes():
    model = _fcos()
    detector = detector_of(model)
    with torch.no_grad():
        out = detector(IMAGES)
        logits, boxes = detector.adapter()(out)
    assert logits.shape == out["cls_logits"].shape and boxes.shape == out["bbox_regression"].shape
    torch.testing.assert_close(logits.sigmoid(), detection_scores(out["cls_logits"], out["bbox_ctrness"]))
    # boxes: torchvision's coder on torchvision's anchors of the resized images
    image_list, _ = model.transform(list(IMAGES))
    features = list(model.backbone(image_list.tensors).values())
    anchors = model.anchor_generator(image_list, features)[0]
    torch.testing.assert_close(boxes[1], model.box_coder.decode(out["bbox_regression"][1], anchors))


def test_quantizing_the_view_quantizes_the_users_model_under_its_own_names():
    model = _fcos()
    detector = detector_of(model)
    quantize(detector, QuantConfig(w_bits=8, a_bits=8, laq_patterns=("@head",)), inplace=True, example_input=IMAGES)
    names = set(quantized_layers(model))
    assert names == set(quantized_layers(detector))
    assert {"backbone.body.conv1", "head.classification_head.cls_logits", "head.regression_head.bbox_ctrness"} <= names
    assert type(model.head.classification_head.cls_logits.weight_quant).__name__ == "LogAffineQuantizer"
    assert type(model.backbone.body.conv1.weight_quant).__name__ == "UniformQuantizer"


def test_fgl_reads_the_view():
    detector = detector_of(_retinanet())
    with torch.no_grad():
        out = detector(IMAGES)
    noisy = {k: v + 0.05 * torch.randn_like(v) for k, v in out.items()}
    loss, parts = FilteredGlobalLoss(detector.adapter())(noisy, out)
    assert torch.isfinite(loss) and parts["kept"] > 0


def test_what_is_not_a_detector_is_named():
    with pytest.raises(NotADetectorError, match=r"the model \(Conv2d\) is not a detector .* it lacks postprocess, adapter, "
                                                r"head_patterns, feature_modules, family"):
        detector_of(nn.Conv2d(3, 8, 3))
    torch_detector = _fcos()
    del torch_detector.anchor_generator
    with pytest.raises(NotADetectorError, match=r"FCOS does not have the layout of torchvision's one-stage detectors: it "
                                                r"lacks anchor_generator"):
        TorchvisionFCOS(torch_detector)


def test_a_head_of_another_layout_names_the_missing_module():
    model = _fcos()  # a user's FCOS whose regression head has no centerness branch
    del model.head.regression_head.bbox_ctrness
    with pytest.raises(NotADetectorError, match=r"FCOS's head is not laid out as torchvision's FCOS head: it lacks the "
                                                r"module\(s\) head.regression_head.bbox_ctrness \(expected: .*\)\. A "
                                                r"changed head needs a Detector of its own"):
        detector_of(model)
    model = _retinanet()
    model.head.classification_head.logits = model.head.classification_head.cls_logits  # renamed
    del model.head.classification_head.cls_logits
    with pytest.raises(NotADetectorError, match=r"lacks the module\(s\) head.classification_head.cls_logits "):
        detector_of(model)


def test_ssdlite_detections_are_torchvisions_own():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from lightning_ptq.detection import TorchvisionSSD

    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=CLASSES + 1).eval()
    model.score_thresh, model.nms_thresh, model.detections_per_img = 0.2, 0.5, 50
    detector = detector_of(model)
    assert isinstance(detector, TorchvisionSSD)
    with torch.no_grad():
        want = model(list(IMAGES))
        out = detector(IMAGES)
        got = detector.postprocess(out, conf_thr=0.2, iou_thr=0.5, max_det=50)
        logits, _ = detector.adapter()(out)
    assert sum(len(d["scores"]) for d in want) > 0
    for g, w in zip(got, want):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], w[key])
    # the ranking logits are the foreground classes' softmax probabilities, as logits
    torch.testing.assert_close(logits.sigmoid(), out["cls_logits"].softmax(-1)[..., 1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["RetinaNetR18", "SSDLite"])
def test_the_zoo_detectors_train_with_torchvisions_loss_and_keep_the_datas_labels(name):
    import lightning_ptq.detection as detection

    torch.manual_seed(0)
    model = getattr(detection, name)(CLASSES, 64).train()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])}] * 2
    loss, parts = model.compute_loss(torch.rand(2, 3, 64, 64), targets)
    assert torch.isfinite(loss) and loss.requires_grad and set(parts) == {"classification", "bbox_regression"}
    with torch.no_grad():
        detections = model.eval().postprocess(model(IMAGES[:, :, :64, :64]), conf_thr=0.0, iou_thr=0.5, max_det=20)
    labels = torch.cat([d["labels"] for d in detections])
    assert len(labels) and labels.min() >= 0 and labels.max() < CLASSES  # 0..C-1, background never reported


def test_the_zoo_retinanet_has_a_groupnorm_head_and_names_a_width_it_cannot_split():
    from lightning_ptq.detection import RetinaNetR18

    head = RetinaNetR18(CLASSES, 64).head
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8 and all(n.num_groups == 32 for n in norms)  # after each of the 2 x 4 head convs
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in RetinaNetR18(CLASSES, 64, head_norm=False).head.modules())
    with pytest.raises(ValueError, match=r"fpn_channels=48 must be a multiple of 32 .*head_norm=False"):
        RetinaNetR18(CLASSES, 64, fpn_channels=48)

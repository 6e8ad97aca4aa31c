"""Ultralytics YOLO (v8, 11) as Detectors: the view shares the DetectionModel's layers, its raw
outputs decode to what Ultralytics' own head and NMS give, the DFL conv stays float, the head's
convs get the log-affine quantizer, its loss trains it, and its pickled checkpoints need trust."""
import pytest
import torch
from torch import nn

pytest.importorskip("ultralytics")  # the ultralytics extra (installed by the README's command)

from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402

from lightning_ptq import QuantConfig, quantize, quantized_layers  # noqa: E402
from lightning_ptq.core import ConfigError  # noqa: E402
from lightning_ptq.detection import UltralyticsYOLO, UntrustedCheckpointError, detector_of, save_detector  # noqa: E402
from lightning_ptq.quant.laq import LogAffineQuantizer  # noqa: E402

IMAGES = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolo11n.yaml"])
def yolo(request):
    torch.manual_seed(0)
    model = UltralyticsYOLO(3, 128, request.param).eval()
    model.cfg = request.param  # what a checkpoint of it records
    return model


def test_raw_outputs_decode_to_ultralytics_own_detections(yolo):
    with torch.no_grad():
        out = yolo(IMAGES)
        assert out["boxes"].shape == (2, 4 * yolo.head.reg_max, 16 * 16 + 8 * 8 + 4 * 4) and out["scores"].shape[1] == 3
        decoded, _ = yolo.detection_model(IMAGES)  # Ultralytics' inference: its decode, in its own head
        want = non_max_suppression(decoded, 0.001, 0.6, max_det=100, nc=3)
        got = yolo.postprocess(out, conf_thr=0.001, iou_thr=0.6, max_det=100)
    for g, w in zip(got, want):
        torch.testing.assert_close(g["boxes"], w[:, :4])
        torch.testing.assert_close(g["scores"], w[:, 4])
        assert torch.equal(g["labels"], w[:, 5].long())
    logits, boxes = yolo.adapter()(out)
    assert logits.shape == (2, out["boxes"].shape[-1], 3) and boxes.shape == (2, out["boxes"].shape[-1], 4)
    assert (boxes[..., 2:] >= boxes[..., :2]).all()  # xyxy


def test_every_conv_but_the_dfl_is_quantized_and_the_head_gets_laq(yolo):
    q = quantize(yolo, QuantConfig(w_bits=4, a_bits=4, laq_patterns=("@head",)), example_input=IMAGES)
    layers = quantized_layers(q)
    convs = [n for n, m in yolo.named_modules() if isinstance(m, nn.Conv2d)]
    head = len(yolo.model) - 1
    assert set(layers) == set(convs) - {f"model.{head}.dfl.conv"}  # the fixed integral conv stays float
    laq = {n for n, l in layers.items() if isinstance(l.weight_quant, LogAffineQuantizer)}
    assert laq == {n for n in layers if n.startswith((f"model.{head}.cv2.", f"model.{head}.cv3."))} and laq
    assert type(q.model[0].act).__name__ == "Identity"  # conv + BN + SiLU fused (its shared SiLU unshared)


def test_a_users_detection_model_is_viewed_in_place():
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    view = detector_of(model)
    assert isinstance(view, UltralyticsYOLO) and view.model is model.model
    quantize(view, QuantConfig(w_bits=8, a_bits=8), inplace=True, example_input=IMAGES)
    assert set(quantized_layers(model)) == set(quantized_layers(view))  # the user's own model is quantized


def test_its_loss_trains_it():
    torch.manual_seed(0)
    yolo = UltralyticsYOLO(3, 128, "yolov8n.yaml").train()
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 120.0, 110.0]]), "labels": torch.tensor([0, 2])}]
    optimizer = torch.optim.AdamW(yolo.parameters(), 2e-3)
    losses = []
    for _ in range(8):
        loss, parts = yolo.compute_loss(IMAGES, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"box_loss", "cls_loss", "dfl_loss"}
    assert losses[-1] < 0.8 * losses[0]


def test_checkpoints_ours_and_a_trusted_ultralytics_pickle(tmp_path, yolo):
    ours = save_detector(yolo, tmp_path / "ours.pt", {"cfg": yolo.cfg}, ["a", "b", "c"])
    torch.save({"model": yolo.detection_model}, tmp_path / "best.pt")  # what Ultralytics saves: the model object
    with torch.no_grad():
        want = yolo(IMAGES)["scores"]
        for loaded in (UltralyticsYOLO.from_checkpoint(ours, 3, 128, {}),  # the architecture comes from the file
                       UltralyticsYOLO.from_checkpoint(tmp_path / "best.pt", 3, 128, {}, trust=True)):
            torch.testing.assert_close(loaded.eval()(IMAGES)["scores"], want)
    with pytest.raises(UntrustedCheckpointError, match=r"best.pt holds pickled Python objects .* set "
                                                       r"model.trust_checkpoint=true"):
        UltralyticsYOLO.from_checkpoint(tmp_path / "best.pt", 3, 128, {})
    with pytest.raises(ConfigError, match=r"best.pt detects 3 classes but the data has 5"):
        UltralyticsYOLO.from_checkpoint(tmp_path / "best.pt", 5, 128, {}, trust=True)


@pytest.mark.parametrize("build, kind", [
    (lambda: SegmentationModel("yolov8n-seg.yaml", nc=3, verbose=False), "segment"),
    (lambda: ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False), "classification"),
])
def test_other_tasks_are_refused_with_what_is_supported(build, kind):
    with pytest.raises(ConfigError, match=rf"ends in a \w+ head: lightning_ptq quantizes Ultralytics detection models "
                                          rf"\(a Detect head: yolov8n.yaml, yolo11n.yaml.*\), not {kind} models"):
        UltralyticsYOLO.wrap(build())


def test_the_quantized_model_exports_and_runs_in_onnxruntime_as_simulated(tmp_path):
    from lightning_ptq import calibrate_ranges, to_onnx
    from lightning_ptq.export.runtimes import RuntimeModel

    torch.manual_seed(0)
    yolo = UltralyticsYOLO(3, 128, "yolov8n.yaml").eval()
    q = quantize(yolo, QuantConfig(w_bits=8, a_bits=8, w_init="minmax"), example_input=IMAGES)
    calibrate_ranges(q, [IMAGES], progress=False)
    path = to_onnx(q, IMAGES, tmp_path / "yolov8n.onnx").path
    runtime = RuntimeModel(path, q, IMAGES, "onnxruntime", optimize=False)
    with torch.no_grad():
        got, want = runtime(IMAGES), q(IMAGES)
    for key in want:  # graph optimisations off: the simulation to float rounding
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)

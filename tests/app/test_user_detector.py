"""A detector the package knows nothing about, defined here, runs through the whole job by
``model._target_``: pretrained by the project through its ``compute_loss``, quantized with the
log-affine quantizer on *its* head layers (``@head`` -> its ``head_patterns``), calibrated under the
filtered global loss through *its* adapter, evaluated through *its* postprocess."""
import pytest
import torch
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from lightning_ptq.core.detector import NotADetectorError
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.job import run_job
from lightning_ptq.quant.laq import LogAffineQuantizer

STRIDE = 8


class CellDetector(nn.Module):
    """One-level anchor-free detector: a small conv trunk to stride 8, then per cell class logits
    and the distances (in strides, through exp) from the cell centre to the box sides."""

    family = "cell"
    head_patterns = ("predictor.*",)
    feature_modules = ("trunk",)

    def __init__(self, num_classes: int, image_size: int = 128, width: int = 32):
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        block = lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.trunk = nn.Sequential(block(3, width // 2, 2), block(width // 2, width, 2), block(width, width, 2),
                                   block(width, width, 1), block(width, width, 1))
        self.predictor = nn.ModuleDict({"cls": nn.Conv2d(width, num_classes, 1), "box": nn.Conv2d(width, 4, 1)})
        n = image_size // STRIDE
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        self.register_buffer("centres", (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * STRIDE, persistent=False)

    def forward(self, images):
        f = self.trunk(images)
        return {k: conv(f).flatten(2).transpose(1, 2) for k, conv in self.predictor.items()}  # [B, A, C], [B, A, 4]

    def decode(self, box):
        d = box.float().clamp(max=6).exp() * STRIDE
        c = self.centres
        return torch.stack([c[:, 0] - d[..., 0], c[:, 1] - d[..., 1], c[:, 0] + d[..., 2], c[:, 1] + d[..., 3]], -1)

    def adapter(self):
        return lambda out: (out["cls"].float(), self.decode(out["box"]))

    @torch.no_grad()
    def postprocess(self, outputs, conf_thr=0.001, iou_thr=0.6, max_det=100):
        scores, boxes = outputs["cls"].float().sigmoid(), self.decode(outputs["box"])
        results = []
        for s, b in zip(scores, boxes):
            cell, label = torch.where(s > conf_thr)
            keep = batched_nms(b[cell], s[cell, label], label, iou_thr)[:max_det]
            results.append({"boxes": b[cell][keep], "scores": s[cell, label][keep], "labels": label[keep]})
        return results

    def compute_loss(self, images, targets):
        """Focal loss on the classes; GIoU on the boxes of the cells whose centre lies in an
        object's central region (1.5 cells around its centre), FCOS's centre sampling."""
        out = self(images)
        boxes = self.decode(out["box"])
        cls_target = torch.zeros_like(out["cls"])
        box_losses = []
        for i, t in enumerate(targets):
            for box, label in zip(t["boxes"], t["labels"]):
                centre = (box[:2] + box[2:]) / 2
                near = ((self.centres - centre).abs() <= 1.5 * STRIDE).all(1)
                inside = ((self.centres > box[:2]) & (self.centres < box[2:])).all(1)
                cells = torch.where(near & inside)[0]
                if not len(cells):  # a tiny object: its nearest cell
                    cells = (self.centres - centre).norm(dim=1).argmin().view(1)
                cls_target[i, cells, label] = 1.0
                box_losses.append(generalized_box_iou_loss(boxes[i, cells], box.expand(len(cells), 4)))
        count = max(sum(len(b) for b in box_losses), 1)
        cls_loss = sigmoid_focal_loss(out["cls"], cls_target, reduction="sum") / count
        box_loss = torch.cat(box_losses).sum() / count if box_losses else out["box"].sum() * 0
        return cls_loss + 2 * box_loss, {"cls": cls_loss.detach(), "box": box_loss.detach()}


OVERRIDES = [
    f"model._target_={__name__}.CellDetector", "logger=none", "trainer.enable_progress_bar=false",
    "data.generator_kwargs={splits: {train: 256, calib: 32, val: 16, test: 64}}", "model.train.epochs=12",
    "model.train.batch_size=4", "model.train.val_every=12", "model.train.lr=1.0e-2",
    "calib.num_images=32", "calib.steps=20", "calib.batch_size=8", "eval.num_vis_images=2",
]


@pytest.mark.slow  # pretrains the detector for 12 epochs (about 1.5 min on 2 CPU cores)
def test_a_detector_unknown_to_the_package_runs_through_the_whole_job(tmp_path):
    cfg = compose_config(["+recipe=yolo_w8a8", f"cache_dir={tmp_path / 'cache'}", *OVERRIDES,
                          "quant.laq_patterns=[@head]"])
    results = run_job(cfg, tmp_path / "run")
    assert len(list((tmp_path / "cache" / "models").glob("cell-*.pt"))) == 1  # pretrained by its compute_loss
    assert results["fp.map"] > 0.03  # measured 0.063 (an untrained one: 0.0005): it learned to detect
    assert results["quant.map"] >= 0.9 * results["fp.map"]  # W8A8 keeps it (measured 0.064)
    assert results["calib.holdout_images"] == 8
    state = torch.load(tmp_path / "run" / "quantized_state_dict.pt", weights_only=True)
    laq = {k.rsplit(".weight_quant.", 1)[0] for k in state if ".weight_quant." in k and k.endswith("log2_k")}
    assert laq == {"predictor.cls", "predictor.box"}, laq  # its head, from its own head_patterns


def test_a_class_that_is_not_a_detector_is_named_with_what_it_lacks(tmp_path):
    torch.save({}, tmp_path / "weights.pt")
    cfg = compose_config(["+recipe=yolo_w4a4", f"cache_dir={tmp_path}", "logger=none", "model._target_=torch.nn.Identity",
                          f"model.checkpoint={tmp_path / 'weights.pt'}",
                          "data.generator_kwargs={splits: {train: 4, calib: 4, val: 4, test: 4}}"])
    with pytest.raises(NotADetectorError, match=r"model._target_='torch.nn.modules.linear.Identity' \(Identity\) is not a "
                                                 r"detector lightning_ptq can calibrate: it lacks postprocess, adapter, "
                                                 r"head_patterns, feature_modules, family"):
        run_job(cfg, tmp_path / "run")

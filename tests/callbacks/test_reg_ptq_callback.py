"""RegPTQCallback: LAQ on the detection head, uniform elsewhere, on a user's detector module."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ptq.callbacks import HEAD_PATTERNS, RegPTQCallback
from lightning_ptq.models import YOLO, detect
from lightning_ptq.quant import ConfigError, FakeQuantizer, LayerPatternError, quantized_layers
from lightning_ptq.quant.laq import LogAffineQuantizer


class UserDetector(L.LightningModule):
    """A user's module holding the detector as ``self.detector``; its test step counts detections."""

    def __init__(self):
        super().__init__()
        self.detector = YOLO(num_classes=3, width_mult=0.125, image_size=64)

    def test_step(self, batch, _):
        (images,) = batch
        dets = detect(self.detector, images, conf_thr=0.0, max_det=5)
        self.log("test/dets", float(sum(len(d["boxes"]) for d in dets)))


def _loader():
    return DataLoader(TensorDataset(torch.rand(8, 3, 64, 64)), batch_size=4)


def test_head_gets_laq_and_the_rest_stays_uniform(tmp_path):
    torch.manual_seed(0)
    module = UserDetector().eval()
    callback = RegPTQCallback({"w_bits": 4, "a_bits": 4}, family="yolo", laq_on="both", submodule="detector",
                              calib_dataloader=_loader(), num_batches=2)
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    result = trainer.test(module, _loader(), verbose=False)
    assert result[0]["test/dets"] == 4 * 5  # per batch of 4 images, max_det=5 each
    layers = quantized_layers(module.detector)
    head = {n: l for n, l in layers.items() if n.startswith("head.")}
    rest = {n: l for n, l in layers.items() if not n.startswith("head.")}
    assert head and rest
    assert all(isinstance(q, LogAffineQuantizer) and q.initialized for l in head.values() for q in l.quantizers)
    assert all(isinstance(q, FakeQuantizer) and q.initialized for l in rest.values() for q in l.quantizers)


def test_unknown_family_and_unmatched_head_pattern(tmp_path):
    with pytest.raises(ConfigError, match=r"family='detr' is unknown: choose one of yolo, retinanet, fcos"):
        RegPTQCallback(family="detr")
    callback = RegPTQCallback(family="retinanet", submodule="detector", calib_dataloader=_loader())
    assert callback.config.laq_patterns == HEAD_PATTERNS["retinanet"]
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with pytest.raises(LayerPatternError, match=r"head\.classification_head\.\*"):
        trainer.test(UserDetector(), _loader(), verbose=False)

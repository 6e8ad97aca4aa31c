"""RegPTQCallback: LAQ on the detection head, uniform elsewhere, on a user's detector module."""
import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ptq.callbacks import HEAD_PATTERNS, RegPTQCallback
from lightning_ptq.detection import YOLO, detect
from lightning_ptq.quant import ConfigError, UniformQuantizer, LayerPatternError, quantized_layers
from lightning_ptq.quant.laq import LogAffineQuantizer


class UserDetector(L.LightningModule):
    """A user's module holding the detector as ``self.detector``; its test step keeps the class
    logits and the detections of what it ran."""

    def __init__(self):
        super().__init__()
        self.detector = YOLO(num_classes=3, width_mult=0.125, image_size=64)
        for m in self.detector.modules():  # variance-keeping init: features that do not fade to the bias
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.logits, self.detections = [], []

    def test_step(self, batch, _):
        (images,) = batch
        self.logits.append(self.detector(images)["cls"])
        self.detections += detect(self.detector, images, conf_thr=0.0, max_det=5)


IMAGES = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _loader():
    return DataLoader(TensorDataset(IMAGES), batch_size=4)


def test_head_gets_laq_and_the_rest_stays_uniform(tmp_path):
    torch.manual_seed(0)
    module = UserDetector().eval()
    fp = copy.deepcopy(module.detector)
    callback = RegPTQCallback({"w_bits": 4, "a_bits": 4}, family="yolo", laq_on="both", submodule="detector",
                              calib_dataloader=_loader(), num_batches=2)
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.test(module, _loader(), verbose=False)
    # the test loop ran the calibrated quantized detector, not the FP one
    with torch.no_grad():
        fp_logits = torch.cat([fp(images)["cls"] for (images,) in _loader()])
        q_logits = torch.cat([module.detector(images)["cls"] for (images,) in _loader()])
    logits = torch.cat(module.logits)
    torch.testing.assert_close(logits, q_logits)
    assert (logits - fp_logits).abs().max() > 1e-3  # measured: 0.015
    assert len(module.detections) == 8  # one result per test image
    layers = quantized_layers(module.detector)
    head = {n: l for n, l in layers.items() if n.startswith("head.")}
    rest = {n: l for n, l in layers.items() if not n.startswith("head.")}
    assert head and rest
    assert all(isinstance(q, LogAffineQuantizer) and q.initialized for l in head.values() for q in l.quantizers)
    assert all(isinstance(q, UniformQuantizer) and q.initialized for l in rest.values() for q in l.quantizers)


def test_unknown_family_and_unmatched_head_pattern(tmp_path):
    with pytest.raises(ConfigError, match=r"family='detr' is unknown: choose one of yolo, retinanet, fcos"):
        RegPTQCallback(family="detr")
    callback = RegPTQCallback(family="retinanet", submodule="detector", calib_dataloader=_loader())
    assert callback.config.laq_patterns == HEAD_PATTERNS["retinanet"]
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with pytest.raises(LayerPatternError, match=r"head\.classification_head\.\*"):
        trainer.test(UserDetector(), _loader(), verbose=False)

"""RegPTQCallback: the regression-aware method on a detector inside a user's own Trainer."""
import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lightning_ptq.calib import CalibConfig, FGLConfig, FilteredGlobalLoss, NotDistillableError
from lightning_ptq.callbacks import QuantizationCallback, RegPTQCallback
from lightning_ptq.core.detector import NotADetectorError
from lightning_ptq.detection import YOLO, detect
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.pipeline import check_calib_config
from lightning_ptq.quant import LayerPatternError, QuantConfig, UniformQuantizer, quantized_layers
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


def _trainer(tmp_path, callbacks, **kw):
    return L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **kw)


def test_head_gets_laq_the_rest_uniform_and_fgl_calibrates(tmp_path):
    torch.manual_seed(0)
    module = UserDetector().eval()
    fp = copy.deepcopy(module.detector)
    callback = RegPTQCallback(calib={"steps": 3, "holdout": 0.0}, calib_dataloader=_loader(), num_images=8)
    _trainer(tmp_path, [callback]).test(module, _loader(), verbose=False)  # no submodule: the detector child is found
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
    assert all(isinstance(l.weight_quant, LogAffineQuantizer) and isinstance(l.input_quant, UniformQuantizer)
               for l in head.values())  # laq_on="weights", as the recipe
    assert all(isinstance(q, UniformQuantizer) and q.initialized for l in rest.values() for q in l.quantizers)
    assert isinstance(callback.calibration_loss(callback.network(module)), FilteredGlobalLoss)
    assert type(module.detector.stem[0].conv).__name__ == "QuantConv2d" and \
        type(module.detector.stem[0].act).__name__ == "Identity"  # conv + BN + SiLU fused, as in the job


def test_defaults_are_the_recipes():
    """RegPTQCallback() calibrates as `+recipe=yolo_w4a4` does, QuantizationCallback() as the job."""
    recipe = compose_config(["+recipe=yolo_w4a4"])
    callback = RegPTQCallback()
    assert callback.config == QuantConfig.from_dict(dict(recipe.quant))
    calib = check_calib_config(recipe.calib)
    assert callback.calib == CalibConfig(**{f: getattr(calib, f) for f in CalibConfig.__dataclass_fields__})
    assert callback.fgl == calib.fgl and calib.loss == "fgl"
    assert callback.num_images == calib.num_images
    job = compose_config([])
    plain = QuantizationCallback()
    assert plain.config == QuantConfig.from_dict(dict(job.quant))
    job_calib = check_calib_config(job.calib)
    assert plain.calib == CalibConfig(**{f: getattr(job_calib, f) for f in CalibConfig.__dataclass_fields__})


def test_errors_name_the_callbacks_own_arguments(tmp_path):
    callback = RegPTQCallback(head_patterns=["neck.*"], calib={"steps": 0}, calib_dataloader=_loader(),
                              submodule="detector")
    with pytest.raises(LayerPatternError, match=r"RegPTQCallback: layer pattern 'neck\.\*' matches no .* of "
                                                r"submodule='detector' \(YOLO\).* Fix the callback's arguments: "
                                                r"head_patterns=\[\.\.\.\]"):
        _trainer(tmp_path, [callback]).test(UserDetector(), _loader(), verbose=False)

    class TwoNets(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(3, 3, 1)

        def test_step(self, batch, _):
            self.net(batch[0])

    with pytest.raises(NotADetectorError, match=r"no child of TwoNets is a detector \(\['net'\]\): pass "
                                                r"submodule='<attribute>'"):
        _trainer(tmp_path, [RegPTQCallback(calib_dataloader=_loader())]).test(TwoNets(), _loader(), verbose=False)


# -- a stock torchvision FCOS in a user's module, with torchvision's batches ----------------------

def _targets(n):
    return [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(n)]


class TorchvisionUser(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        backbone = BackboneWithFPN(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"},
                                   [128, 256, 512], 32, extra_blocks=LastLevelP6P7(32, 32))
        self.model = FCOS(backbone, num_classes=3, min_size=64, max_size=64)
        self.results = []

    def test_step(self, batch, _):
        images, targets = batch
        self.results += self.model(images)


# min/max weight ranges: the MSE search over ResNet-18's 11.7 M weights alone takes ~30 s
MINMAX = {"w_bits": 8, "a_bits": 8, "w_init": "minmax"}


def _torchvision_batches():
    """torchvision's detection batches: (a tuple of images, a tuple of target dicts)."""
    return DataLoader(list(zip(IMAGES, _targets(8))), batch_size=4, collate_fn=lambda batch: tuple(zip(*batch)))


def test_a_stock_torchvision_fcos_with_torchvision_batches(tmp_path):
    module = TorchvisionUser().eval()
    callback = RegPTQCallback({**MINMAX, "laq_patterns": ["@head"]}, {"steps": 2, "weight_lr": 0.0},
                              calib_dataloader=_torchvision_batches())
    _trainer(tmp_path, [callback]).test(module, _torchvision_batches(), verbose=False)
    assert len(module.results) == 8 and {"boxes", "scores", "labels"} <= set(module.results[0])
    layers = quantized_layers(module.model)
    assert isinstance(layers["head.classification_head.cls_logits"].weight_quant, LogAffineQuantizer)
    assert all(q.initialized for l in layers.values() for q in l.quantizers)


def test_post_processed_outputs_stop_the_distillation_with_the_fix(tmp_path):
    """The trap a user fell into: QuantizationCallback on a torchvision detector distils its
    forward, which in eval mode returns detections."""
    callback = QuantizationCallback(MINMAX, {"steps": 2}, calib_dataloader=_torchvision_batches(), submodule="model")
    with pytest.raises(NotDistillableError, match=r"post-processed detections .* Distil the raw head outputs instead.*"
                                                  r"detector_of\(model\).*RegPTQCallback"):
        _trainer(tmp_path, [callback]).test(TorchvisionUser().eval(), _torchvision_batches(), verbose=False)

"""The callback on a LightningModule written without any knowledge of lightning_ptq."""
import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ptq.callbacks import QuantizationCallback
from lightning_ptq.quant import LayerPatternError, QuantConv2d, UniformQuantizer


class PlainClassifier(L.LightningModule):
    """An ordinary user module: conv + BN + linear, logs test/acc."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def test_step(self, batch, _):
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _data(n=256, seed=0):
    """Four classes: a bright blob in one of the four quadrants, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, r * 4 : r * 4 + 4, col * 4 : col * 4 + 4] += 2.0
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _trainer(tmp_path, callbacks=(), **kw):
    kw.setdefault("max_epochs", 1)
    return L.Trainer(
        default_root_dir=tmp_path, callbacks=list(callbacks), logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", **kw,
    )


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = PlainClassifier()
    L.Trainer(max_epochs=8, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, accelerator="cpu").fit(model, _data())
    return model.state_dict()


def _fresh(state):
    model = PlainClassifier()
    model.load_state_dict(state)
    return model


RANGES = {"steps": 0}  # ranges only: what most of these tests need, quickly


def test_callback_calibrates_and_tests_user_module(trained, tmp_path):
    fp_acc = _trainer(tmp_path).test(_fresh(trained), _data(seed=1), verbose=False)[0]["test/acc"]
    assert fp_acc > 0.9
    model = _fresh(trained)
    cb = QuantizationCallback({"w_bits": 8, "a_bits": 8}, RANGES, calib_dataloader=_data(seed=2), num_images=128)
    q_acc = _trainer(tmp_path, [cb]).test(model, _data(seed=1), verbose=False)[0]["test/acc"]
    assert isinstance(model.net[0], QuantConv2d)
    assert all(q.is_active for m in model.modules() if isinstance(m, UniformQuantizer) for q in [m])
    assert abs(q_acc - fp_acc) <= 0.03


def test_the_callback_learns_scales_as_the_job_does(trained, tmp_path):
    """The default calibration is the job's: ranges, then learned scales under output MSE, with
    the held-out check; the callback fuses conv + BN + ReLU as the job does."""
    ranges, learned = _fresh(trained), _fresh(trained)
    for model, calib in ((ranges, RANGES), (learned, {"steps": 30, "lr": 1e-2})):
        cb = QuantizationCallback({"w_bits": 2, "a_bits": 4}, calib, calib_dataloader=_data(seed=2))
        _trainer(tmp_path, [cb]).test(model, _data(seed=1), verbose=False)
    assert type(learned.net[0]).__name__ == "QuantConv2d" and type(learned.net[2]).__name__ == "Identity"  # ReLU fused
    fp = _fresh(trained).eval()
    x = next(iter(_data(seed=3)))[0]
    with torch.no_grad():
        errors = [(m.eval()(x) - fp(x)).pow(2).mean().item() for m in (ranges, learned)]
    assert errors[1] < errors[0]  # learning reduced the distillation error (measured 0.37 -> 0.07)
    assert not (tmp_path / "lightning_ptq_calibration").exists()  # the resume folder goes once calibrated


def test_each_callback_setting_resumes_from_its_own_folder(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path)
    ranges = QuantizationCallback({"w_bits": 4}, {"steps": 0}).checkpoint_dir(trainer)
    learned = QuantizationCallback({"w_bits": 4}, {"steps": 10}).checkpoint_dir(trainer)
    assert ranges.parent == learned.parent == tmp_path / "lightning_ptq_calibration"
    assert ranges != learned and ranges.name.startswith("QuantizationCallback-")
    assert QuantizationCallback({"w_bits": 4}, {"steps": 0}).checkpoint_dir(trainer) == ranges


def test_fit_resume_and_test_from_checkpoint(trained, tmp_path):
    cfg = {"w_bits": 4, "a_bits": 8}
    model = _fresh(trained)
    trainer = _trainer(tmp_path, [QuantizationCallback(cfg, RANGES, calib_dataloader=_data(seed=2))], max_epochs=1)
    trainer.fit(model, _data())  # quantization-aware fine-tuning for one epoch
    ckpt = tmp_path / "q.ckpt"
    trainer.save_checkpoint(ckpt)
    acc = _trainer(tmp_path).test(model, _data(seed=1), verbose=False)[0]["test/acc"]

    # A fresh, float module: the callback swaps it in setup, then the checkpoint loads into it.
    fresh = PlainClassifier()
    cb = QuantizationCallback(cfg, RANGES, calib_dataloader=_data(seed=2))
    cb.calibrate = lambda *a: pytest.fail("must not recalibrate: the checkpoint holds the ranges")
    acc2 = _trainer(tmp_path, [cb]).test(fresh, _data(seed=1), ckpt_path=ckpt, verbose=False)[0]["test/acc"]
    assert acc2 == pytest.approx(acc)
    scales = [m.scale for m in fresh.modules() if isinstance(m, UniformQuantizer)]
    assert all(s.ne(1.0).any() for s in scales)  # loaded, not the initial value

    resumed = PlainClassifier()
    t2 = _trainer(tmp_path, [QuantizationCallback(cfg, RANGES, calib_dataloader=_data(seed=2))], max_epochs=2)
    t2.fit(resumed, _data(), ckpt_path=ckpt)
    assert t2.current_epoch == 2 and isinstance(resumed.net[0], QuantConv2d)


def test_quantization_aware_fine_tuning_starts_from_a_float_checkpoint(trained, tmp_path):
    float_ckpt = tmp_path / "float.ckpt"
    t0 = _trainer(tmp_path, max_epochs=1)
    t0.fit(_fresh(trained), _data())
    t0.save_checkpoint(float_ckpt)  # an ordinary float checkpoint of the user's training, at epoch 1
    model = PlainClassifier()  # random weights: the checkpoint's must arrive
    cb = QuantizationCallback({"w_bits": 4, "a_bits": 4}, {"steps": 10}, calib_dataloader=_data(seed=2))
    trainer = _trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(model, _data(), ckpt_path=float_ckpt)
    assert isinstance(model.net[0], QuantConv2d) and trainer.current_epoch == 1  # one QAT epoch from epoch 0
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, UniformQuantizer))
    acc = _trainer(tmp_path).test(model, _data(seed=1), verbose=False)[0]["test/acc"]
    assert acc > 0.85  # the float checkpoint's weights, quantized (a random model scores 0.25)


def test_loading_a_quantized_checkpoint_without_the_callback_names_it(trained, tmp_path):
    model = _fresh(trained)
    trainer = _trainer(tmp_path, [QuantizationCallback({"w_bits": 8, "a_bits": 8}, RANGES, calib_dataloader=_data())])
    trainer.test(model, _data(), verbose=False)
    trainer.save_checkpoint(tmp_path / "q.ckpt")
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"lightning_ptq_quantized_by_QuantizationCallback"):
        PlainClassifier.load_from_checkpoint(tmp_path / "q.ckpt")


def test_checkpoint_with_other_config_is_refused(trained, tmp_path):
    model = _fresh(trained)
    trainer = _trainer(tmp_path, [QuantizationCallback({"w_bits": 8, "a_bits": 8}, RANGES, calib_dataloader=_data())])
    trainer.test(model, _data(), verbose=False)
    ckpt = tmp_path / "w8.ckpt"
    trainer.save_checkpoint(ckpt)
    other = _trainer(tmp_path, [QuantizationCallback({"w_bits": 4, "a_bits": 4}, RANGES, calib_dataloader=_data())])
    with pytest.raises(ValueError, match="the checkpoint was quantized with .*w_bits=8"):
        other.test(PlainClassifier(), _data(), ckpt_path=ckpt, verbose=False)


def test_callback_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"num_images=0 must be a positive integer"):
        QuantizationCallback(num_images=0)
    with pytest.raises(ValueError, match=r"w_bits=16 is not a supported bit width"):
        QuantizationCallback({"w_bits": 16})
    with pytest.raises(ValueError, match=r"calib.holdout=0.7 must lie in \[0, 0.5\)"):
        QuantizationCallback(calib={"holdout": 0.7})
    cb = QuantizationCallback(submodule="backbone")
    with pytest.raises(AttributeError, match=r"submodule='backbone': PlainClassifier has no such attribute; its children are \['net'\]"):
        cb.target(PlainClassifier())
    cb = QuantizationCallback({"include": ["backbone.*"]}, RANGES, calib_dataloader=_data())
    with pytest.raises(LayerPatternError, match=r"QuantizationCallback: layer pattern 'backbone\.\*' matches no Conv2d/Linear "
                                                r"layer of the whole LightningModule .* like: net\.0, net\.3, net\.7\. Fix the "
                                                r"callback's arguments: config=QuantConfig\(include=.*submodule="):
        _trainer(tmp_path, [cb]).test(PlainClassifier(), _data(), verbose=False)

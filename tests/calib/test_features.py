"""Feature matching (Reg-PTQ's local term): the added term is the normalised MSE of the chosen
modules' outputs, its gradient reaches the layers before them, its hooks exist only while
calibrating, and bad module names or weights stop with a clear message."""
import pytest
import torch

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize
from lightning_ptq.calib import FeatureMatching, OutputMSE
from lightning_ptq.quant import ConfigError
from lightning_ptq.quant.swap import quantizers

from tiny import tiny_batches, tiny_net


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _calibrated_pair():
    fp = tiny_net()
    qmodel = quantize(fp, QuantConfig(w_bits=3, a_bits=3))
    calibrate(fp, qmodel, tiny_batches(), CalibConfig(steps=0))
    return fp, qmodel


def test_term_is_the_normalised_feature_mse_and_reaches_earlier_layers():
    fp, qmodel = _calibrated_pair()
    loss = FeatureMatching(OutputMSE(), ["1"], weight=0.5)  # the ReLU after the first conv
    loss.attach(fp, qmodel)
    x = tiny_batches()[0]
    with torch.no_grad():
        t_out = fp(x)
    s_out = qmodel(x)
    total, parts = loss(s_out, t_out)
    with torch.no_grad():
        t_feat, s_feat = fp[1](fp[0](x)), qmodel[1](qmodel[0](x))
    expected_local = (s_feat - t_feat).pow(2).mean() / t_feat.var()
    global_, _ = OutputMSE()(s_out, t_out)
    assert parts["features"] == pytest.approx(expected_local.item(), rel=1e-5)
    assert parts["global"] == pytest.approx(global_.item(), rel=1e-5)
    torch.testing.assert_close(total, global_ + 0.5 * expected_local)
    total.backward()
    first = quantizers(qmodel)["0.weight_quant"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.learnable_parameters())
    loss.detach()
    assert _hooks(fp) == _hooks(qmodel) == 0


def test_calibration_with_features_removes_its_hooks_and_lowers_the_feature_error():
    fp = tiny_net()
    errors = {}
    for weight in (0.0, 10.0):
        qmodel = quantize(fp, QuantConfig(w_bits=3, a_bits=3))
        base = OutputMSE()
        loss = FeatureMatching(base, ["1"], weight=weight) if weight else base
        calibrate(fp, qmodel, tiny_batches(), CalibConfig(steps=40, lr=1e-2), loss=loss,
                  trainer_kwargs={"enable_progress_bar": False})
        assert _hooks(fp) == _hooks(qmodel) == 0
        with torch.no_grad():
            errors[weight] = sum((qmodel[1](qmodel[0](x)) - fp[1](fp[0](x))).pow(2).mean().item()
                                 for x in tiny_batches())
    assert errors[10.0] < errors[0.0]


def test_bad_settings_are_named():
    fp, qmodel = _calibrated_pair()
    with pytest.raises(ConfigError, match=r"pattern 'backbone\.\*' matches no module of Sequential"):
        FeatureMatching(OutputMSE(), ["backbone.*"]).attach(fp, qmodel)
    with pytest.raises(ConfigError, match=r"calib.features.weight=-1 must be >= 0"):
        FeatureMatching(OutputMSE(), ["1"], weight=-1)
    with pytest.raises(ConfigError, match="calib.features.modules is empty"):
        FeatureMatching(OutputMSE(), [])
    with pytest.raises(RuntimeError, match=r"called before attach"):
        FeatureMatching(OutputMSE(), ["1"])(qmodel(tiny_batches()[0]), fp(tiny_batches()[0]))


def test_fisher_weights_are_the_squared_gradient_of_the_global_loss():
    fp, qmodel = _calibrated_pair()
    loss = FeatureMatching(OutputMSE(), ["1"], weight=1.0, fisher=True)
    loss.attach(fp, qmodel)
    x = tiny_batches()[0]
    with torch.no_grad():
        t_out = fp(x)
    _, parts = loss(qmodel(x), t_out)
    loss.detach()
    feat = qmodel[1](qmodel[0](x))
    global_, _ = OutputMSE()(qmodel[2](feat), t_out)
    (grad,) = torch.autograd.grad(global_, feat)
    weight = grad.pow(2) / grad.pow(2).mean()
    with torch.no_grad():
        t_feat = fp[1](fp[0](x))
        expected = (weight * (feat - t_feat).pow(2)).mean() / t_feat.var()
    assert parts["features"] == pytest.approx(expected.item(), rel=1e-4)
    assert expected.item() != pytest.approx(((feat - t_feat).pow(2).mean() / t_feat.var()).item(), rel=1e-2)

"""``weight_lr``: the quantized layers' weights and biases learn with the quantizer parameters
(AdaQuant-style), the teacher stays as it is, and with the default 0 the weights never move."""
import pytest
import torch
from torch import nn

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize
from lightning_ptq.calib import CalibrationModule
from lightning_ptq.calib.module import weight_step
from lightning_ptq.calib.losses import OutputMSE

from tiny import tiny_batches, tiny_net


def _error(fp, qmodel) -> float:
    with torch.no_grad():
        return sum(OutputMSE()(qmodel(x), fp(x))[0].item() for x in tiny_batches())


def _calibrated(fp, weight_lr: float):
    qmodel = quantize(fp, QuantConfig(w_bits=3, a_bits=3))
    calibrate(fp, qmodel, tiny_batches(), CalibConfig(steps=60, lr=1e-2, weight_lr=weight_lr),
              trainer_kwargs={"enable_progress_bar": False})
    return qmodel


def test_weights_stay_fixed_by_default():
    fp = tiny_net()
    qmodel = _calibrated(fp, 0.0)
    for name, a in fp.named_parameters():
        assert torch.equal(a, qmodel.get_parameter(name)), name


def test_weight_tuning_moves_the_student_only_and_lowers_the_error():
    fp = tiny_net()
    before = [p.detach().clone() for p in fp.parameters()]
    fixed = _calibrated(fp, 0.0)
    tuned = _calibrated(fp, 0.1)
    for a, b in zip(before, fp.parameters()):  # the teacher (the user's model) is untouched
        torch.testing.assert_close(a, b)
    moved = {name: not torch.equal(a, tuned.get_parameter(name)) for name, a in fp.named_parameters()}
    assert all(moved.values()), moved  # both convs' weights and biases learned
    assert _error(fp, tuned) < 0.8 * _error(fp, fixed)


def test_negative_weight_lr_is_refused():
    fp = tiny_net()
    with pytest.raises(ValueError, match=r"weight_lr=-0.1 must be >= 0"):
        CalibrationModule(fp, quantize(fp, QuantConfig()), weight_lr=-0.1)


def test_weight_step_is_the_mean_channel_step_of_the_layer_grid():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.7, -1.4]).view(2, 1, 1, 1))
    q4 = quantize(nn.Sequential(conv), QuantConfig(w_bits=4, a_bits=8))[0]
    q8 = quantize(nn.Sequential(conv), QuantConfig(w_bits=8, a_bits=8))[0]
    assert weight_step(q4) == pytest.approx((0.7 / 7 + 1.4 / 7) / 2)
    assert weight_step(q8) == pytest.approx((0.7 / 127 + 1.4 / 127) / 2)


def test_each_layer_learns_at_its_own_step_size():
    fp = tiny_net()
    qmodel = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    module = CalibrationModule(fp, qmodel, weight_lr=0.1)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups[1:]] == pytest.approx([0.1 * weight_step(qmodel[0]), 0.1 * weight_step(qmodel[2])])
    assert [len(g["params"]) for g in groups[1:]] == [2, 2]  # weight and bias of each conv


@pytest.mark.parametrize("weight_lr", [0.0, 0.1])
def test_learning_gives_back_the_callers_requires_grad_flags(weight_lr):
    # a student whose weights are to be fine-tuned afterwards (quantization-aware training) must
    # still have them trainable; DDP, built before calibration, stops on a parameter that became frozen
    fp = tiny_net()
    qmodel = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    qmodel[0].bias.requires_grad_(False)  # whatever the caller set is what comes back
    flags = {(i, name): p.requires_grad for i, model in enumerate((fp, qmodel)) for name, p in model.named_parameters()}
    calibrate(fp, qmodel, tiny_batches(), CalibConfig(steps=2, weight_lr=weight_lr),
              trainer_kwargs={"enable_progress_bar": False})
    assert {(i, name): p.requires_grad for i, model in enumerate((fp, qmodel))
            for name, p in model.named_parameters()} == flags
    assert flags[(0, "0.weight")] and flags[(1, "0.weight")] and not flags[(1, "0.bias")]


def test_learning_gives_back_every_modules_train_or_eval_mode():
    # Lightning leaves what it fitted in train mode: a user's test loop after the callback would
    # then run dropout, batch statistics or a head's training branch
    fp = tiny_net()
    qmodel = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    qmodel[1].train()  # whatever the caller set is what comes back
    modes = [m.training for model in (fp, qmodel) for m in model.modules()]
    calibrate(fp, qmodel, tiny_batches(), CalibConfig(steps=2), trainer_kwargs={"enable_progress_bar": False})
    assert [m.training for model in (fp, qmodel) for m in model.modules()] == modes
    assert not qmodel.training and qmodel[1].training

"""The held-out check of the learning stage: the last calibration batches are kept out of every
stage, the distillation error on them is reported before and after learning, and learning that
made it worse is undone (``keep_better``, on by default) or only reported."""
import logging

import pytest
import torch

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize
from lightning_ptq.calib.api import held_out_loss
from lightning_ptq.calib.losses import OutputMSE
from lightning_ptq.core import ConfigError

from tiny import tiny_batches, tiny_net

QUIET = {"enable_progress_bar": False}


def _batches():
    torch.manual_seed(2)
    return [torch.rand(4, 3, 12, 12) for _ in range(10)]


def _forward(model, batch):
    return model(batch)


def test_learning_is_checked_on_batches_it_never_saw():
    fp = tiny_net()
    qmodel = quantize(fp, QuantConfig(w_bits=3, a_bits=3))
    seen = []
    hook = qmodel[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].data_ptr()))
    batches = _batches()
    report = calibrate(fp, qmodel, batches, CalibConfig(steps=20, lr=1e-2, holdout=0.2), trainer_kwargs=QUIET)
    hook.remove()
    assert report.holdout_images == 8  # 20% of 10 batches of 4
    held = {b.data_ptr() for b in batches[-2:]}
    assert held and held <= set(seen)  # measured on them ...
    assert seen.count(batches[-1].data_ptr()) == 2  # ... exactly twice: before and after learning, never learned on
    assert report.kept == "learned" and report.holdout_loss_after < report.holdout_loss_before
    assert report.holdout_loss_after == pytest.approx(held_out_loss(fp, qmodel, batches[-2:], OutputMSE(), _forward))
    assert report.results() == {"calib.holdout_images": 8, "calib.holdout_loss_before": report.holdout_loss_before,
                                "calib.holdout_loss_after": report.holdout_loss_after, "calib.kept": "learned",
                                "calib.ranks": 1}  # one process: no rank_difference


class Sabotage:
    """A distillation loss that rewards moving away from the teacher: learning makes things worse."""

    def __call__(self, student, teacher):
        loss = -(student - teacher).pow(2).mean()
        return loss, {}

    base = OutputMSE()  # what the held-out check measures


@pytest.mark.parametrize("keep_better", [True, False])
def test_learning_that_made_it_worse_is_undone_or_reported(keep_better, caplog):
    fp = tiny_net()
    qmodel = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    with caplog.at_level(logging.WARNING):
        report = calibrate(fp, qmodel, _batches(), CalibConfig(steps=30, lr=5e-2, keep_better=keep_better),
                           loss=Sabotage(), trainer_kwargs=QUIET)
    assert report.holdout_loss_after > report.holdout_loss_before
    assert "learning made the distillation error on the 4 held-out images worse" in caplog.text
    now = held_out_loss(fp, qmodel, _batches()[-1:], OutputMSE(), _forward)
    if keep_better:
        assert report.kept == "before_learning" and now == pytest.approx(report.holdout_loss_before)
    else:
        assert report.kept == "learned" and now == pytest.approx(report.holdout_loss_after)


def test_no_holdout_without_learning_or_with_one_batch():
    fp = tiny_net()
    assert calibrate(fp, quantize(fp), tiny_batches(), CalibConfig(steps=0)).holdout_images == 0
    report = calibrate(fp, quantize(fp), tiny_batches()[:1], CalibConfig(steps=2), trainer_kwargs=QUIET)
    assert report.holdout_images == 0 and report.holdout_loss_before is None
    report = calibrate(fp, quantize(fp), tiny_batches(), CalibConfig(steps=2, holdout=0.0), trainer_kwargs=QUIET)
    assert report.holdout_images == 0


@pytest.mark.parametrize("setting, match", [
    ({"holdout": 0.5}, r"calib.holdout=0.5 must lie in \[0, 0.5\)"),
    ({"holdout": True}, r"calib.holdout=True must lie in"),
    ({"keep_better": "yes"}, r"calib.keep_better='yes' must be true or false"),
])
def test_bad_settings(setting, match):
    with pytest.raises(ConfigError, match=match):
        CalibConfig(**setting)

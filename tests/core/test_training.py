"""Runs the library makes for the user are quiet: no Lightning banner, tips or warnings about what
the library does on purpose; progress as steps out of the total, as log lines off a terminal."""
import logging
import warnings

import torch
from torch import nn

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize


def _calibrate(**trainer_kwargs):
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    batches = [torch.rand(2, 3, 8, 8) for _ in range(2)]
    q = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    config = CalibConfig(steps=3, holdout=0.0)  # both batches learned on: 2 steps per epoch
    return calibrate(fp, q, batches, config, trainer_kwargs={"accelerator": "cpu", **trainer_kwargs})


def test_calibrate_prints_no_lightning_banner_tip_or_expected_warning(capsys, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        _calibrate()
    out = capsys.readouterr()
    said = out.out + out.err + caplog.text
    for line in ("GPU available", "TPU available", "Tip:", "`Trainer.fit` stopped", "Epoch "):
        assert line not in said, line
    assert not [w for w in caught if "eval mode" in str(w.message) or "does not have many workers" in str(w.message)]


def test_off_a_terminal_progress_is_a_log_line_with_steps_out_of_the_total(caplog):
    with caplog.at_level(logging.INFO, logger="lightning_ptq.core.training"):
        _calibrate()
    lines = [r.getMessage() for r in caplog.records if r.name == "lightning_ptq.core.training"]
    assert lines and lines[-1].startswith("calibrating: step 3/3 (epoch 1)")  # the last step is always reported
    assert "calib/loss" in lines[-1]


def test_no_progress_when_the_progress_bar_is_off(caplog):
    with caplog.at_level(logging.INFO, logger="lightning_ptq.core.training"):
        _calibrate(enable_progress_bar=False)
    assert not [r for r in caplog.records if r.name == "lightning_ptq.core.training"]


def test_lightning_info_level_is_restored_afterwards():
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    before = rank_zero.level
    _calibrate()
    assert rank_zero.level == before

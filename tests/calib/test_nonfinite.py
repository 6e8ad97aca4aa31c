"""NaN / inf during calibration: the error names the step and the module, and the last good
quantized state is on disk."""
import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_ptq.calib import (
    CalibConfig, CalibrationModule, NonFiniteCalibrationError, NonFiniteLossError, calibrate, calibrate_ranges,
)
from lightning_ptq.calib.module import LAST_GOOD
from lightning_ptq.core.tree import first_non_finite_module
from lightning_ptq.quant import QuantConfig, quantize

TRAINER = dict(enable_progress_bar=False, accelerator="cpu")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(2, 3, 8, 8, generator=g) for _ in range(n)]


def test_first_non_finite_module_names_the_layer_or_the_input():
    net = _net()
    x = torch.rand(1, 3, 8, 8)
    assert first_non_finite_module(net, x) is None
    with torch.no_grad():
        net[2].weight[0, 0] = float("inf")
    assert first_non_finite_module(net, x) == "2"
    assert first_non_finite_module(_net(), torch.full((1, 3, 8, 8), float("nan"))) == "<input>"


def test_nan_image_stops_range_observation_naming_batch_and_layer():
    fp = _net()
    batches = _batches()
    batches[1][0, 0, 0, 0] = float("nan")
    q = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    with pytest.raises(NonFiniteCalibrationError, match=r"calibration batch 1 gives NaN or inf at the input of layer '0'"):
        calibrate_ranges(q, batches, progress=False)


class _NaNAtLearningStep:
    """Forward that feeds NaN to the model from its ``at``-th call on (ranges see clean data)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, model, batch):
        self.calls += 1
        return model(batch * float("nan") if self.calls >= self.at else batch)


def test_nan_during_learning_stops_with_step_and_module_and_keeps_last_good_state(tmp_path):
    fp = _net()
    batches = _batches()
    q = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    # 3 range batches, then per step one teacher and one student call: call 7 is step 1's student.
    forward = _NaNAtLearningStep(at=3 + 2 + 2)
    with pytest.raises(NonFiniteLossError, match=r"at step 1 \(first non-finite output in module '0.input_quant'\)") as err:
        calibrate(fp, q, batches, CalibConfig(steps=5, lr=1e-3), forward_fn=forward, checkpoint_dir=tmp_path, trainer_kwargs=TRAINER)
    saved = torch.load(tmp_path / LAST_GOOD, weights_only=True)
    assert str(tmp_path / LAST_GOOD) in str(err.value)
    assert all(torch.isfinite(v).all() for v in saved.values())
    for name, value in q.state_dict().items():  # the state after step 0, before the bad step
        torch.testing.assert_close(saved[name], value)


def test_broken_quantizer_parameter_is_named():
    fp = _net()
    batches = _batches()
    q = quantize(fp, QuantConfig(w_bits=4, a_bits=4))
    calibrate_ranges(q, batches, progress=False)
    with torch.no_grad():
        q[2].weight_quant.scale.fill_(float("nan"))
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_model_summary=False, **TRAINER)
    with pytest.raises(NonFiniteLossError, match=r"at step 0 \(non-finite quantizer parameters in \['2.weight_quant'\]"):
        trainer.fit(CalibrationModule(fp, q, max_steps=3), DataLoader(torch.cat(batches), batch_size=2))

"""An interrupted calibration resumes from its last checkpoint and ends where an uninterrupted one
does."""
import pytest
import torch

from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize
from lightning_ptq.calib import CalibrationModule
from lightning_ptq.quant import quantizer_parameters

from tiny import tiny_batches, tiny_net


def _calibrate(model, checkpoint_dir, weight_lr=0.0):
    qmodel = quantize(model, QuantConfig(w_bits=4, a_bits=4))
    calibrate(model, qmodel, tiny_batches(), CalibConfig(steps=10, lr=1e-2, weight_lr=weight_lr),
              checkpoint_dir=checkpoint_dir, trainer_kwargs={"enable_progress_bar": False})
    return [p.detach().clone() for p in [*quantizer_parameters(qmodel), *qmodel.parameters()]]


@pytest.mark.parametrize("weight_lr", [0.0, 1e-2])  # quantizer parameters only; weights learning too
def test_interrupted_calibration_resumes_to_the_same_result(tmp_path, monkeypatch, weight_lr):
    model = tiny_net()
    reference = _calibrate(model, tmp_path / "straight", weight_lr)

    original = CalibrationModule.training_step

    def crash_at_step_6(self, batch, batch_idx):
        if self.global_step == 6:
            raise RuntimeError("power cut")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CalibrationModule, "training_step", crash_at_step_6)
    with pytest.raises(RuntimeError, match="power cut"):
        _calibrate(model, tmp_path / "cut", weight_lr)
    saved = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=False)  # our own file, written by Lightning
    assert saved["global_step"] == 6  # written after every step (steps // 10), not only at the end

    monkeypatch.setattr(CalibrationModule, "training_step", original)
    resumed = _calibrate(model, tmp_path / "cut", weight_lr)
    for a, b in zip(resumed, reference):
        torch.testing.assert_close(a, b)


def test_ranges_only_never_resume_from_a_checkpoint_left_in_the_folder(tmp_path):
    # a learned calibration stopped here; a ranges-only one in the same folder once skipped its
    # ranges for it and returned a model whose quantizers passed values through (test mAP = FP)
    model = tiny_net()
    _calibrate(model, tmp_path)  # leaves last.ckpt
    assert (tmp_path / "last.ckpt").exists()
    qmodel = quantize(model, QuantConfig(w_bits=4, a_bits=4))
    calibrate(model, qmodel, tiny_batches(), CalibConfig(steps=0), checkpoint_dir=tmp_path)
    reference = quantize(model, QuantConfig(w_bits=4, a_bits=4))
    calibrate(model, reference, tiny_batches(), CalibConfig(steps=0))
    for (name, a), b in zip(qmodel.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    x = tiny_batches()[0]
    assert not torch.allclose(qmodel(x), model(x), atol=1e-3)  # quantized, not passed through

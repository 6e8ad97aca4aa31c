"""examples/torchvision_lightning.py, the Lightning project a user copies, runs as written for each
torchvision detector (FCOS, RetinaNet, SSDlite): on a tiny dataset by default (it trains, tests, and
tests two quantized copies through the callbacks), and in full (FCOS) as the slow test that holds
it to the issue's numbers."""
import json

import pytest
from torch import nn

from lightning_ptq.callbacks import QuantizationCallback, RegPTQCallback
from lightning_ptq.calib import FilteredGlobalLoss
from lightning_ptq.detection import generate_detection_dataset
from lightning_ptq.quant import quantized_layers

from script_files import load_script


def _example():
    return load_script("examples/torchvision_lightning.py")


# RetinaNet and SSDlite take a minute each on 2 CPU cores (SSDlite resizes to 320 px); FCOS stays in the default run
@pytest.mark.parametrize("arch", ["fcos", pytest.param("retinanet", marks=pytest.mark.slow),
                                  pytest.param("ssdlite", marks=pytest.mark.slow)])
def test_the_example_runs_and_its_callbacks_quantize_and_calibrate(arch, tmp_path, monkeypatch):
    data = generate_detection_dataset(tmp_path / "data", splits={"train": 32, "calib": 16, "val": 8, "test": 16})
    seen = {}

    def spy(calibrate):
        def run(self, trainer, pl_module):
            calibrate(self, trainer, pl_module)
            network = self.network(pl_module)
            seen[type(self).__name__] = {
                "layers": len(quantized_layers(pl_module.model)), "loss": type(self.calibration_loss(network)).__name__,
                "steps": self.calib.steps,
                "head": {type(m.weight_quant).__name__ for n, m in pl_module.model.named_modules()
                         if n.startswith("head.") and hasattr(m, "weight_quant")},
            }
        return run

    for cls in (QuantizationCallback, RegPTQCallback):
        monkeypatch.setattr(cls, "calibrate", spy(cls.calibrate))
    example = _example()
    results = example.main(["--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--steps", "3",
                            "--arch", arch])
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == pytest.approx(results)
    assert set(results) == {"fp32", "w4a4_ranges", "w4a4_reg_ptq", "retention_reg_ptq"}
    assert all(0.0 <= results[k] <= 1.0 for k in ("fp32", "w4a4_ranges", "w4a4_reg_ptq"))
    convs = sum(isinstance(m, nn.Conv2d) for m in example.Detector(num_classes=7, arch=arch).model.modules())
    assert seen["QuantizationCallback"] == {"layers": convs, "loss": "NoneType", "steps": 0,
                                            "head": {"UniformQuantizer"}}
    assert seen["RegPTQCallback"] == {"layers": convs, "loss": FilteredGlobalLoss.__name__, "steps": 3,
                                      "head": {"LogAffineQuantizer"}}  # every conv, the head's with LAQ, FGL


@pytest.mark.slow
def test_the_example_in_full_reaches_the_issues_numbers(tmp_path):
    """The default data, 8 epochs, 200 calibration steps (about 30 min on 2 CPU cores): W4A4 with the
    regression-aware method keeps at least 95% of FP mAP and beats ranges only."""
    data = generate_detection_dataset(tmp_path / "data")
    results = _example().main(["--data", str(data), "--out", str(tmp_path / "out")])
    assert 0.3 < results["fp32"] < 0.9
    assert results["retention_reg_ptq"] >= 0.95
    assert results["w4a4_reg_ptq"] > results["w4a4_ranges"]

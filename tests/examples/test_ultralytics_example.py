"""examples/ultralytics_yolo_lightning.py, the Lightning project of an Ultralytics user, runs as
written on a tiny dataset: it trains, tests, and tests two quantized copies through the callbacks
(every conv but the DFL integral quantized, the head's with the log-affine quantizer under the
filtered global loss)."""
import json

import pytest
from torch import nn

pytest.importorskip("ultralytics")  # the ultralytics extra (installed by the README's command)

from lightning_ptq.callbacks import QuantizationCallback, RegPTQCallback  # noqa: E402
from lightning_ptq.calib import FilteredGlobalLoss  # noqa: E402
from lightning_ptq.detection import generate_detection_dataset  # noqa: E402
from lightning_ptq.quant import quantized_layers  # noqa: E402

from script_files import load_script  # noqa: E402


def _example():
    return load_script("examples/ultralytics_yolo_lightning.py")


def test_the_example_runs_and_its_callbacks_quantize_and_calibrate(tmp_path, monkeypatch):
    data = generate_detection_dataset(tmp_path / "data", splits={"train": 32, "calib": 16, "val": 8, "test": 16})
    seen = {}

    def spy(calibrate):
        def run(self, trainer, pl_module):
            calibrate(self, trainer, pl_module)
            head = pl_module.model.model[-1]
            seen[type(self).__name__] = {
                "layers": len(quantized_layers(pl_module.model)), "steps": self.calib.steps,
                "loss": type(self.calibration_loss(self.network(pl_module))).__name__,
                "head": type(head.cv2[0][2].weight_quant).__name__, "dfl": type(head.dfl.conv).__name__,
            }
        return run

    for cls in (QuantizationCallback, RegPTQCallback):
        monkeypatch.setattr(cls, "calibrate", spy(cls.calibrate))
    example = _example()
    results = example.main(["--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--steps", "3"])
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == pytest.approx(results)
    assert all(0.0 <= results[k] <= 1.0 for k in ("fp32", "w4a4_ranges", "w4a4_reg_ptq"))
    convs = sum(isinstance(m, nn.Conv2d) for m in example.Detector(num_classes=7).model.modules()) - 1  # but the DFL
    assert seen["QuantizationCallback"] == {"layers": convs, "steps": 0, "loss": "NoneType", "head": "UniformQuantizer",
                                            "dfl": "Conv2d"}
    assert seen["RegPTQCallback"] == {"layers": convs, "steps": 3, "loss": FilteredGlobalLoss.__name__,
                                      "head": "LogAffineQuantizer", "dfl": "Conv2d"}

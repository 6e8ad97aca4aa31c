"""The callback in a user's project trained with ``Trainer(strategy="ddp", devices=2)`` (gloo on
CPU): the processes calibrate together, each on its share of the calibration batches, so both
replicas hold the same quantized model after calibration and after fitting (before, every rank
calibrated its own ranges and 7 of 84 quantizer tensors differed after fit)."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")

# A user's script: Lightning's launcher runs it once more for the second process.
SCRIPT = textwrap.dedent('''
    import sys
    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_ptq.callbacks import QuantizationCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def on_train_start(self):  # the calibrated model, before any training step
            torch.save(self.state_dict(), f"{sys.argv[1]}/calibrated_{self.global_rank}.pt")

        def on_train_end(self):
            torch.save(self.state_dict(), f"{sys.argv[1]}/fitted_{self.global_rank}.pt")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    torch.manual_seed(0)  # every process draws the same data and initial weights
    x, y = torch.randn(64, 1, 8, 8) * (1 + torch.arange(64).view(64, 1, 1, 1) / 16), torch.randint(0, 4, (64,))
    calib = DataLoader(TensorDataset(x, y), batch_size=8)  # different ranges in every batch
    callback = QuantizationCallback({"w_bits": 4, "a_bits": 4},
                                    {"steps": 3, "init_batches": 4, "recon": {"steps": 2}, "keep_better": False},
                                    calib_dataloader=calib, num_images=64, resume=False)
    trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=2, callbacks=[callback],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=sys.argv[1])
    trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=8))
''')


def test_both_replicas_hold_the_same_quantized_model(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("calibrated", "fitted"):
        first, second = (torch.load(tmp_path / f"{stage}_{r}.pt", weights_only=True) for r in (0, 1))
        assert any("input_quant" in k for k in first)  # quantized
        for key in first:
            assert torch.equal(first[key], second[key]), (stage, key)
    calibrated, fitted = (torch.load(tmp_path / f"{s}_0.pt", weights_only=True) for s in ("calibrated", "fitted"))
    assert any(not torch.equal(calibrated[k], fitted[k]) for k in calibrated)  # fitting changed the model

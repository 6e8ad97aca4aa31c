"""The callback in a user's project trained with ``Trainer(strategy="ddp", devices=2)`` (gloo on
CPU): the processes calibrate together, each on its share of the calibration batches, so both
replicas hold the same quantized model after calibration and after fitting (before, every rank
calibrated its own ranges and 7 of 84 quantizer tensors differed after fit). The per-layer search
callback shares its evaluations between the processes and finds what one process finds."""
import json
import os
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


# A user's search: the callbacks before trainer.validate, the user's own torchmetrics accuracy.
SEARCH_SCRIPT = textwrap.dedent('''
    import json, sys
    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics.classification import MulticlassAccuracy
    from lightning_ptq.callbacks import LayerwiseSearch, QuantizationCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
            self.acc = MulticlassAccuracy(4, average="micro")
            self.steps = 0

        def forward(self, x):
            return self.net(x)

        def validation_step(self, batch, _):
            self.steps += 1
            self.acc(self(batch[0]), batch[1])
            self.log("val/acc", self.acc)

    out, devices = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)  # every process draws the same data and weights
    centres = torch.randn(4, 8) * 2
    y = torch.randint(0, 4, (512,))
    x = centres[y] + torch.randn(512, 8)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    data = DataLoader(TensorDataset(x, y), batch_size=64)
    callbacks = [QuantizationCallback({"w_bits": 2, "a_bits": 3, "w_init": "minmax", "a_init": "minmax"},
                                      {"steps": 0, "init_batches": 4}, calib_dataloader=data, num_images=256,
                                      resume=False),
                 LayerwiseSearch("val/acc", config={"threshold": 0.0, "max_drop": 0.0}, val_dataloader=data,
                                 calib_dataloader=data, output_dir=f"{out}/search")]
    trainer = L.Trainer(strategy="ddp" if devices > 1 else "auto", devices=devices, accelerator="cpu",
                        callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=out)
    trainer.validate(net, data, verbose=False)
    torch.save(net.state_dict(), f"{out}/searched_{trainer.global_rank}.pt")
    with open(f"{out}/steps_{trainer.global_rank}.json", "w") as f:
        json.dump(net.steps, f)
''')


def _searched(folder, devices: int) -> None:
    folder.mkdir()
    script = folder / "search.py"
    script.write_text(SEARCH_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process in both runs: the same sums
    done = subprocess.run([sys.executable, str(script), str(folder), str(devices)], capture_output=True, text=True,
                          timeout=600, cwd=folder, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_search_callback_shares_its_evaluations_and_finds_what_one_process_finds(tmp_path):
    _searched(tmp_path / "one", 1)
    _searched(tmp_path / "two", 2)
    one = json.loads((tmp_path / "one" / "search" / "search.json").read_text())
    two = json.loads((tmp_path / "two" / "search" / "search.json").read_text())
    assert one["final_metric"] > one["start_metric"]  # the search changed the model
    assert [(r["name"], r["chosen"], r["w_bits"], r["a_bits"]) for r in two["layers"]] == \
        [(r["name"], r["chosen"], r["w_bits"], r["a_bits"]) for r in one["layers"]]
    assert two["final_metric"] == one["final_metric"]
    reference = torch.load(tmp_path / "one" / "searched_0.pt", weights_only=True)
    for rank in (0, 1):
        state = torch.load(tmp_path / "two" / f"searched_{rank}.pt", weights_only=True)
        assert state.keys() == reference.keys()
        for key in state:
            assert torch.equal(state[key], reference[key]), (rank, key)
    # rank 0 alone wrote the report; each rank ran a share of the validation loops
    assert len(list((tmp_path / "two").rglob("search.json"))) == 1
    steps = [json.loads((tmp_path / "two" / f"steps_{r}.json").read_text()) for r in (0, 1)]
    assert max(steps) < 0.7 * json.loads((tmp_path / "one" / "steps_0.json").read_text())

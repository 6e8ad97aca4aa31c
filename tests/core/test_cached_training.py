"""The train-once cache the embedded default models share: settings checked, a cached model
loaded, otherwise trained in a work folder, saved with its metrics, the folder removed."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_ptq.core.cached_training import train_or_load, train_settings
from lightning_ptq.quant import ConfigError


def test_train_settings_fill_defaults_and_refuse_unknown_keys():
    assert train_settings({"epochs": 3}, {"epochs": 10, "lr": 1e-3}) == {"epochs": 3, "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"model.train has unknown keys \['epoch'\]: allowed are \['epochs', 'lr'\]"):
        train_settings({"epoch": 3}, {"epochs": 10, "lr": 1e-3})


def test_trains_once_saves_with_chosen_metrics_then_loads(tmp_path):
    path, calls = tmp_path / "model.pt", []

    def train(work_dir):
        calls.append(work_dir)
        work_dir.mkdir()  # where Lightning would keep its checkpoints
        metrics = {"val/acc": torch.tensor(0.5), "test/acc": torch.tensor(0.4), "train/loss": torch.tensor(1.0)}
        return SimpleNamespace(model=nn.Linear(2, 2).train(), trainer=SimpleNamespace(callback_metrics=metrics))

    def save(model, p, metrics):
        torch.save({"state_dict": model.state_dict(), "metrics": metrics}, p)

    def load(p):
        model = nn.Linear(2, 2).train()
        model.load_state_dict(torch.load(p, weights_only=True)["state_dict"])
        return model

    trained = train_or_load(path, "test model", 1, load, train, save, metric_prefixes=("val/", "test/"))
    assert calls == [tmp_path / "model.training"] and not calls[0].exists()
    assert not trained.training
    assert torch.load(path, weights_only=True)["metrics"] == {"val/acc": 0.5, "test/acc": pytest.approx(0.4)}
    loaded = train_or_load(path, "test model", 1, load, train, save)
    assert len(calls) == 1 and not loaded.training  # the cached file, not a second training
    torch.testing.assert_close(loaded.weight, trained.weight)

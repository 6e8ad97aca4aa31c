"""Training the FP classifier: a short run is cached and reused, settings are checked, accuracy."""
import pytest
import torch
from omegaconf import OmegaConf

from lightning_ptq.classify import (
    ClassificationDataModule, ClassifierModule, TinyResNet, evaluate_accuracy, pretrained_classifier,
)
from lightning_ptq.classify.train import TRAIN_DEFAULTS, cache_key
from lightning_ptq.quant import ConfigError

CFG = {"checkpoint": None, "kwargs": {"widths": [8, 8, 8], "depths": [1, 1, 1]},
       "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3}}
TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def datamodule(small_classes):
    dm = ClassificationDataModule(small_classes, batch_size=16, generate_default=False)
    dm.setup()
    return dm


def test_short_training_is_cached_and_reused(datamodule, tmp_path, monkeypatch):
    model = pretrained_classifier(datamodule, OmegaConf.create(CFG), tmp_path, trainer_kwargs=TRAINER)
    assert isinstance(model, TinyResNet) and not model.training
    (path,) = tmp_path.glob("classifier-*.pt")
    assert not list(tmp_path.glob("*.training"))  # the work folder is removed once saved
    payload = torch.load(path, weights_only=True)
    assert set(payload["metrics"]) == {"test/acc"} and 0.0 <= payload["metrics"]["test/acc"] <= 1.0
    assert payload["class_names"] == datamodule.class_names and payload["image_size"] == 32

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(ClassifierModule, "training_step", no_training)
    before = path.stat().st_mtime_ns
    again = pretrained_classifier(datamodule, CFG, tmp_path, trainer_kwargs=TRAINER)  # plain dict, same key
    assert path.stat().st_mtime_ns == before and list(tmp_path.glob("classifier-*.pt")) == [path]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    by_checkpoint = pretrained_classifier(datamodule, {**CFG, "checkpoint": str(path)}, tmp_path / "unused")
    assert by_checkpoint.widths == (8, 8, 8) and not (tmp_path / "unused").exists()


def test_unknown_train_key_names_the_allowed_ones(datamodule, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown keys \['epoch'\]: allowed are \['batch_size', 'epochs'"):
        pretrained_classifier(datamodule, {**CFG, "train": {"epoch": 3}}, tmp_path)


def test_evaluate_accuracy_counts_top1_and_restores_the_mode(datamodule, tmp_path):
    model = TinyResNet(datamodule.num_classes).train()
    labels = datamodule.labels("test")
    expected = sum(label == 0 for label in labels) / len(labels)
    with torch.no_grad():
        model.head[2].weight.zero_()
        model.head[2].bias.copy_(torch.arange(datamodule.num_classes, 0, -1).float())  # always class 0
    assert evaluate_accuracy(model, datamodule.test_dataloader()) == pytest.approx(expected)
    assert model.training
    with pytest.raises(ValueError, match="no images"):
        evaluate_accuracy(model, [])


def test_cache_key_changes_with_the_settings(datamodule):
    base = cache_key({}, TRAIN_DEFAULTS, 10, 32, datamodule)
    assert cache_key({}, {**TRAIN_DEFAULTS, "epochs": 1}, 10, 32, datamodule) != base
    assert cache_key({"widths": [8, 8, 8]}, TRAIN_DEFAULTS, 10, 32, datamodule) != base
    assert cache_key({}, TRAIN_DEFAULTS, 10, 32, datamodule) == base


def test_interrupted_training_resumes_from_the_last_epoch(datamodule, tmp_path, monkeypatch):
    cfg = {**CFG, "train": {**CFG["train"], "epochs": 3}}
    original = ClassifierModule.training_step
    epochs = []

    def crash_in_epoch_3(self, batch, batch_idx):
        if self.current_epoch == 2:
            raise RuntimeError("power cut")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="power cut"):
        pretrained_classifier(datamodule, cfg, tmp_path, trainer_kwargs=TRAINER)
    (work_dir,) = tmp_path.glob("classifier-*.training")
    assert (work_dir / "last.ckpt").is_file() and not list(tmp_path.glob("classifier-*.pt"))

    def counting(self, batch, batch_idx):
        epochs.append(self.current_epoch)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", counting)
    pretrained_classifier(datamodule, cfg, tmp_path, trainer_kwargs=TRAINER)
    assert set(epochs) == {2}  # only the third epoch ran again
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 1 and not list(tmp_path.glob("*.training"))

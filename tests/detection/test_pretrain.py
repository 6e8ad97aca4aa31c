"""Pretraining is a Lightning run whose result is cached and reused; a user checkpoint wins."""
import pytest
import torch

from lightning_ptq.detection import CocoDataModule
from lightning_ptq.detection import CheckpointNotFoundError, save_detector
from lightning_ptq.detection import pretrain as pretrain_mod
from lightning_ptq.detection import pretrained_detector

TINY = {"_target_": "lightning_ptq.detection.YOLO", "checkpoint": None, "kwargs": {"width_mult": 0.125, "depth_mult": 0.33, "reg_max": 8},
        "train": {"epochs": 1, "batch_size": 4, "val_every": 1}}
TRAINER = {"enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def datamodule(small_dataset):
    dm = CocoDataModule(small_dataset, batch_size=4)
    dm.setup()
    return dm


def test_first_call_trains_and_caches_second_call_reuses(datamodule, tmp_path, monkeypatch):
    model = pretrained_detector(datamodule, TINY, tmp_path, TRAINER)
    files = list(tmp_path.glob("yolo-*.pt"))
    assert len(files) == 1 and not model.training
    assert not list(tmp_path.glob("*.training"))  # the resumable work folder is removed once saved
    payload = torch.load(files[0], weights_only=True)
    assert payload["class_names"] == datamodule.class_names and "val/map" in payload["metrics"]

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again although a cached checkpoint exists")

    monkeypatch.setattr(pretrain_mod, "_pretrain", no_training)
    again = pretrained_detector(datamodule, TINY, tmp_path, TRAINER)
    x = torch.rand(1, 3, 128, 128)
    torch.testing.assert_close(again(x), model(x))


def test_cache_key_changes_with_what_changes_the_weights(datamodule):
    from lightning_ptq.detection import YOLO, FCOSNet

    key = lambda cls, kwargs, train, classes: pretrain_mod.cache_key(cls, kwargs, train, classes, 128, datamodule)  # noqa: E731
    base = key(YOLO, TINY["kwargs"], TINY["train"], 6)
    assert base == key(YOLO, dict(TINY["kwargs"]), dict(TINY["train"]), 6)
    assert base == key(YOLO, {"width_mult": 0.125}, TINY["train"], 6)  # the rest are the defaults: the same model
    assert key(YOLO, {}, TINY["train"], 6) == key(YOLO, {"width_mult": 0.25, "reg_max": 8}, TINY["train"], 6)
    assert base != key(YOLO, TINY["kwargs"], {**TINY["train"], "epochs": 2}, 6)
    assert base != key(YOLO, {**TINY["kwargs"], "reg_max": 16}, TINY["train"], 6)
    assert base != key(YOLO, TINY["kwargs"], TINY["train"], 5)
    assert key(YOLO, {}, TINY["train"], 6) != key(FCOSNet, {}, TINY["train"], 6)


def test_user_checkpoint_is_used_instead_of_pretraining(datamodule, tmp_path, monkeypatch):
    from lightning_ptq.detection import YOLO

    user = YOLO(datamodule.num_classes, image_size=128, **TINY["kwargs"]).eval()
    path = save_detector(user, tmp_path / "mine.pt", TINY["kwargs"], datamodule.class_names)
    monkeypatch.setattr(pretrain_mod, "_pretrain", lambda *a, **k: pytest.fail("should not pretrain"))
    model = pretrained_detector(datamodule, {**TINY, "checkpoint": str(path)}, tmp_path / "cache", TRAINER)
    x = torch.rand(1, 3, 128, 128)
    torch.testing.assert_close(model(x), user(x))
    with pytest.raises(CheckpointNotFoundError, match="gone.pt does not exist"):
        pretrained_detector(datamodule, {**TINY, "checkpoint": str(tmp_path / "gone.pt")}, tmp_path, TRAINER)


@pytest.mark.parametrize("change, match", [
    ({"_target_": "my_pkg.DETR"}, r"model._target_='my_pkg.DETR' is not a class that can be imported"),
    ({"_target_": None}, r"model._target_ is not set: name the detector class"),
    ({"_target_": "torch.nn.Identity"}, r"model.checkpoint is not set and model._target_=torch.nn.modules.linear.Identity "
                                        r"has no compute_loss"),
    ({"train": {"epochz": 3}}, r"model.train has unknown keys \['epochz'\]"),
])
def test_bad_model_config(datamodule, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        pretrained_detector(datamodule, {**TINY, **change}, tmp_path, TRAINER)


def test_interrupted_pretraining_resumes_from_the_last_epoch(datamodule, tmp_path, monkeypatch):
    from lightning_ptq.detection import DetectorModule

    original, epochs = DetectorModule.training_step, []
    two_epochs = {**TINY, "train": {**TINY["train"], "epochs": 2}}

    def crash_in_epoch_2(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise RuntimeError("power cut")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DetectorModule, "training_step", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="power cut"):
        pretrained_detector(datamodule, two_epochs, tmp_path, TRAINER)
    (work_dir,) = tmp_path.glob("yolo-*.training")
    assert (work_dir / "last.ckpt").is_file()  # written at the end of epoch 1

    def counting(self, batch, batch_idx):
        epochs.append(self.current_epoch)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DetectorModule, "training_step", counting)
    pretrained_detector(datamodule, two_epochs, tmp_path, TRAINER)
    assert set(epochs) == {1}  # epoch 1 was not run again

"""Training the FP keypoint model is cached, and an interrupted training resumes from its last
epoch instead of starting again."""
import pytest

from lightning_ptq.keypoints import KeypointDataModule, KeypointModule, pretrained_keypoint_model

KWARGS = {"widths": [8, 8, 8], "head_channels": 8}
TRAIN = {"epochs": 3, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "seed": 0}
TRAINER = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = KeypointDataModule(tmp_path_factory.mktemp("kp") / "data", generate_default=True,
                            generator_kwargs={"splits": {"train": 16, "calib": 8, "val": 8, "test": 8}})
    dm.setup("fit")
    return dm


def test_interrupted_training_resumes_from_the_last_epoch(datamodule, tmp_path, monkeypatch):
    original = KeypointModule.training_step
    steps = []

    def crash_in_epoch_3(self, batch, batch_idx):
        if self.current_epoch == 2:
            raise RuntimeError("power cut")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(KeypointModule, "training_step", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="power cut"):
        pretrained_keypoint_model(datamodule, KWARGS, TRAIN, cache_dir=tmp_path, trainer_kwargs=TRAINER)
    (work_dir,) = tmp_path.glob("keypoint-*.training")
    assert (work_dir / "last.ckpt").is_file()  # written at the end of epochs 1 and 2, before the crash

    def counting(self, batch, batch_idx):
        steps.append(self.current_epoch)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(KeypointModule, "training_step", counting)
    model = pretrained_keypoint_model(datamodule, KWARGS, TRAIN, cache_dir=tmp_path, trainer_kwargs=TRAINER)
    assert set(steps) == {2}  # only the third epoch ran again
    assert not model.training and len(list(tmp_path.glob("keypoint-*.pt"))) == 1
    assert not list(tmp_path.glob("keypoint-*.training"))  # the work folder is removed once saved

    steps.clear()
    again = pretrained_keypoint_model(datamodule, KWARGS, TRAIN, cache_dir=tmp_path, trainer_kwargs=TRAINER)
    assert steps == [] and again.state_dict().keys() == model.state_dict().keys()  # cached: no training

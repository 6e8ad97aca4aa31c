"""Detector checkpoints: safe loading, round trip, and one clear error per kind of bad file."""
import pytest
import torch

from lightning_ptq.detection import (
    YOLO, CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError, load_detector, save_detector,
)

KWARGS = {"width_mult": 0.125, "depth_mult": 0.33, "reg_max": 8}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return YOLO(3, image_size=64, **KWARGS).eval()


def test_round_trip_gives_the_same_outputs(model, tmp_path):
    path = save_detector(model, tmp_path / "det.pt", KWARGS, ["a", "b", "c"], {"val/map": 0.5})
    loaded = load_detector(path, 3, 64, {}).eval()  # architecture comes from the file
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


@pytest.mark.parametrize("prefix", ["", "model."])
def test_bare_and_lightning_state_dicts_load(model, tmp_path, prefix):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    # a Lightning checkpoint of a module holding the detector as .model (as Trainer.save_checkpoint writes it)
    lightning = {"state_dict": state, "pytorch-lightning_version": "2.6.0", "epoch": 3}
    torch.save(lightning if prefix else state, tmp_path / "user.pt")
    loaded = load_detector(tmp_path / "user.pt", 3, 64, KWARGS).eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x)["cls"], model(x)["cls"])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"nope\.pt does not exist.*model\.checkpoint=null"):
        load_detector(tmp_path / "nope.pt", 3, 64, KWARGS)


def test_truncated_file(model, tmp_path):
    path = save_detector(model, tmp_path / "det.pt", KWARGS, ["a", "b", "c"])
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=r"det\.pt cannot be read as a PyTorch file.*truncated"):
        load_detector(path, 3, 64, KWARGS)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CorruptCheckpointError, match="cannot be read as a PyTorch file"):
        load_detector(tmp_path / "notes.pt", 3, 64, KWARGS)


class Pickled:
    pass


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    torch.save({"state_dict": {}, "extra": Pickled()}, tmp_path / "obj.pt")
    with pytest.raises(CorruptCheckpointError, match=r"obj\.pt contains pickled Python objects \(.*Pickled\).*state_dict\(\)"):
        load_detector(tmp_path / "obj.pt", 3, 64, KWARGS)


def test_whole_model_pickles_are_refused(model, tmp_path):
    torch.save([model.state_dict()], tmp_path / "list.pt")
    with pytest.raises(CorruptCheckpointError, match="holds a list, not a dict"):
        load_detector(tmp_path / "list.pt", 3, 64, KWARGS)


def test_our_checkpoint_for_other_classes(model, tmp_path):
    path = save_detector(model, tmp_path / "det.pt", KWARGS, ["a", "b", "c"])
    with pytest.raises(CheckpointMismatchError, match="trained with num_classes=3 but the data has num_classes=5"):
        load_detector(path, 5, 64, KWARGS)


def test_state_dict_of_another_width(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "user.pt")
    with pytest.raises(CheckpointMismatchError, match=r"does not fit.*shape mismatch \(\d+\): stem"):
        load_detector(tmp_path / "user.pt", 3, 64, {**KWARGS, "width_mult": 0.25})


def test_state_dict_with_missing_weights(model, tmp_path):
    state = model.state_dict()
    del state["head.cls.0.2.weight"]
    torch.save(state, tmp_path / "user.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): head\.cls\.0\.2\.weight"):
        load_detector(tmp_path / "user.pt", 3, 64, KWARGS)

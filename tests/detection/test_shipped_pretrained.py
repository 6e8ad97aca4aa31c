"""The FP models of the default recipes ship with the package (``scripts/ship_pretrained.py``): a
first run on the default data uses them instead of pretraining, and each one reaches the accuracy
recorded when it was trained. Fails when a default model, its training or the default data change
without the shipped files being made again (a first run would then pretrain for minutes)."""
import re

import lightning as L
import pytest
import torch

from lightning_ptq.detection import eval_kwargs, load_data_and_model
from lightning_ptq.classify import evaluate_accuracy
from lightning_ptq.classify.task import load_classification_data_and_model
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.keypoints import evaluate_keypoints
from lightning_ptq.keypoints.task import keypoint_model_kwargs, load_keypoint_data_and_model
from lightning_ptq.detection import evaluate_detections
from lightning_ptq.core.cached_training import shipped_dir


def _detector(cfg):
    datamodule, model = load_data_and_model(cfg)
    return model, evaluate_detections(model, datamodule.val_dataloader(), progress=False, **eval_kwargs(cfg))["map"]


def _keypoint(cfg):
    datamodule, model = load_keypoint_data_and_model(cfg, keypoint_model_kwargs(cfg))
    return model, evaluate_keypoints(model, datamodule.val_dataloader(), progress=False)["nme"]


def _classifier(cfg):
    datamodule, model = load_classification_data_and_model(cfg)
    return model, evaluate_accuracy(model, datamodule.test_dataloader())


@pytest.mark.parametrize("recipe, load, metric, allowed", [
    ("yolo_w4a4", _detector, "val/map", (0.50, 0.90)),  # the default task stays a real one
    ("keypoint_w4a4", _keypoint, "val/nme", (0.0, 0.1)),
    ("classifier_w4a4_search", _classifier, "test/acc", (0.5, 1.0)),
])
def test_a_first_run_uses_the_shipped_model_and_it_reaches_its_recorded_accuracy(recipe, load, metric, allowed,
                                                                                   tmp_path, monkeypatch, caplog):
    def no_training(*args, **kwargs):
        raise AssertionError(f"{recipe}: a first run would pretrain its FP model: run scripts/ship_pretrained.py")

    monkeypatch.setattr(L.Trainer, "fit", no_training)
    cfg = compose_config([f"+recipe={recipe}", "logger=none", f"cache_dir={tmp_path}"])
    with caplog.at_level("INFO"):
        model, measured = load(cfg)
    shipped = [m for m in map(re.compile(r"Using the shipped .* (\S+\.pt) \(set").match, caplog.messages) if m]
    assert len(shipped) == 1 and shipped[0][1].startswith(str(shipped_dir()))
    recorded = torch.load(shipped[0][1], weights_only=True)["metrics"][metric]
    assert measured == pytest.approx(recorded, abs=0.01)
    assert allowed[0] <= measured <= allowed[1]
    assert not list((tmp_path / "models").glob("*.pt"))  # nothing trained, nothing cached

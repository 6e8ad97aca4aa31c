"""The keypoint job end to end on a tiny configuration, and its bad-input errors."""
import json

import pytest
import torch

from lightning_ptq.job import run_job
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.cached_training import shipped_dir
from lightning_ptq.quant import ConfigError

TINY = [
    "logger=none", "trainer.enable_progress_bar=false",
    "data.generator_kwargs={splits: {train: 64, calib: 16, val: 16, test: 16}}",
    "model.kwargs.widths=[8,16,16]", "model.kwargs.head_channels=16", "model.train.epochs=2",
    "model.train.batch_size=16", "calib.num_images=16", "calib.init_batches=1", "calib.steps=3",
    "calib.batch_size=8", "eval.num_vis_images=2",
]


def tiny_cfg(cache_dir, recipe="keypoint_w8a8", *overrides):
    return compose_config([f"+recipe={recipe}", f"cache_dir={cache_dir}", *TINY, *overrides])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first_run(cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_job(tiny_cfg(cache_dir), run_dir), run_dir


def test_tiny_keypoint_job_writes_results_and_artifacts(first_run):
    results, run_dir = first_run
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == pytest.approx(results)
    for key in ("fp.nme", "fp.pck", "fp.oks_ap", "quant.nme", "quant.pck", "quant.oks_ap", "nme_ratio"):
        assert key in saved
    assert (saved["w_bits"], saved["a_bits"], saved["calib_images"]) == (8, 8, 16)
    assert saved["keypoint.compensate"] is True and saved["keypoint.logits"] == "cosine"
    assert 0 < saved["fp.nme"] < 1 and saved["calib_seconds"] > 0
    assert saved["nme_ratio"] == pytest.approx(saved["quant.nme"] / saved["fp.nme"])
    assert [saved[f"clipped_keypoints.{s}"] for s in ("train", "calib", "val", "test")] == [0, 0, 0, 0]
    assert saved["size_ratio"] > 3
    for name in ("quantized_state_dict.pt", "packed.pt", "keypoints.png"):
        assert (run_dir / name).stat().st_size > 0
    state = torch.load(run_dir / "quantized_state_dict.pt", weights_only=True)
    assert any(k.startswith("fc.weight_quant") for k in state)  # the fully connected layer is quantized


def test_second_run_reuses_the_cached_model(first_run, cache_dir, tmp_path):
    results, _ = first_run
    cached = list((cache_dir / "models").glob("keypoint-*.pt"))
    assert len(cached) == 1
    again = run_job(tiny_cfg(cache_dir, "keypoint_w4a4"), tmp_path)
    assert len(list((cache_dir / "models").glob("keypoint-*.pt"))) == 1
    assert again["fp.nme"] == pytest.approx(results["fp.nme"])  # same FP model, same test split


def test_the_shipped_model_keeps_its_accuracy_and_w4a4_costs_more_than_w8a8(tmp_path):
    """On the tiny data (the first crops of the default splits) the shipped FP model is accurate;
    a tiny calibration keeps its NME within bounds, and 4 bits cost more than 8."""
    shipped = next(shipped_dir().glob("keypoint-*.pt"))
    data = [o for o in TINY if not o.startswith("model.")]
    results = {recipe: run_job(compose_config([f"+recipe={recipe}", f"cache_dir={tmp_path / 'cache'}", *data,
                                               f"model.checkpoint={shipped}"]), tmp_path / recipe)
               for recipe in ("keypoint_w8a8", "keypoint_w4a4")}
    assert results["keypoint_w8a8"]["fp.nme"] < 0.05  # measured: 0.0346
    assert results["keypoint_w8a8"]["nme_ratio"] < 1.45  # measured: 1.275 (16 images, 3 steps)
    assert results["keypoint_w4a4"]["nme_ratio"] < 1.5  # measured: 1.338
    assert results["keypoint_w4a4"]["quant.nme"] > results["keypoint_w8a8"]["quant.nme"]


@pytest.mark.parametrize("override, error, message", [
    ("keypoint.beta=0", ConfigError, r"keypoint.beta=0 must be > 0"),
    ("keypoint.grid=1", ConfigError, r"grid=1 is not possible for image_size=64: the grid must be at least 2x2"),
    ("calib.loss=fgl", ConfigError, r"calib.loss=fgl needs a detector"),
    ("+keypoint.sigma=2", ConfigError, r"keypoint has unknown keys \['sigma'\]"),
])
def test_bad_keypoint_settings_fail_before_any_work(override, error, message, tmp_path):
    with pytest.raises(error, match=message):
        run_job(tiny_cfg(tmp_path / "cache", "keypoint_w8a8", override), tmp_path / "run")
    assert not (tmp_path / "cache").exists()


def test_a_detector_job_refuses_the_keypoint_loss(tmp_path):
    cfg = compose_config(["+recipe=yolo_w4a4", "calib.loss=keypoint_distill", f"cache_dir={tmp_path}"])
    from lightning_ptq.pipeline import calibration_loss
    from lightning_ptq.detection import YOLO
    with pytest.raises(ConfigError, match="calib.loss=keypoint_distill needs a keypoint model"):
        calibration_loss(cfg.calib, YOLO(6, width_mult=0.125))

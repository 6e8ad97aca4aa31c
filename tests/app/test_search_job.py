"""The detector job with the per-layer search (``+recipe=yolo_w4a4_search``) on a tiny configuration."""
import json

import pytest

from lightning_ptq.job import run_job
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.quant import ConfigError
from lightning_ptq.search import PoolTooSmallError

from test_main_job import TINY

# The head's layers only (18 of 64), so that the sensitivity pass stays short.
SEARCH = ["search.calib_per_class=1", "search.val_per_class=1", "search.max_targets=2", "search.max_evaluations=12",
          "search.threshold=0.0", "quant.include=[head.*]"]


def search_cfg(cache_dir, *overrides):
    return compose_config(["+recipe=yolo_w4a4_search", f"cache_dir={cache_dir}", *TINY, *SEARCH, *overrides])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_search_job_reports_validation_and_test_and_writes_its_files(cache_dir, tmp_path):
    results = run_job(search_cfg(cache_dir, "search.target=1.0"), tmp_path)  # unreachable: finishes anyway
    saved = json.loads((tmp_path / "search.json").read_text())
    assert results["search.reached"] is False
    assert saved["evaluations"]["sensitivity"] == len(saved["layers"]) + 1
    assert saved["evaluations"]["search"] == 1 + sum(layer["tries"] for layer in saved["layers"]) <= 12 + 1
    assert sum(layer["target"] for layer in saved["layers"]) == 2
    assert results["quant.map"] == pytest.approx(results["search.test_final"])
    assert results["search.val_final"] >= results["search.val_start"]
    assert 4 <= results["search.avg_w_bits"] <= 32
    assert json.loads((tmp_path / "layer_params.json").read_text())["format"] == "lightning_ptq.layer_params/1"
    assert (tmp_path / "sensitivity.png").is_file() and (tmp_path / "results.json").is_file()


def test_a_pool_too_small_for_the_balanced_sets_names_the_classes(cache_dir, tmp_path):
    with pytest.raises(PoolTooSmallError, match=r"cannot give 1 calibration \+ 50 validation images per class.*short: "):
        run_job(search_cfg(cache_dir, "search.val_per_class=50"), tmp_path)


def test_bad_search_settings_fail_before_any_work(cache_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"search.max_trys is not a setting \(allowed: mode, threshold, .*\); "
                                          r"did you mean search.max_targets\?"):
        run_job(search_cfg(cache_dir, "+search.max_trys=3"), tmp_path)  # the schema stops it while composing
    with pytest.raises(ConfigError, match="search.selection='stratified' is not allowed"):
        run_job(search_cfg(cache_dir, "search.selection=stratified"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_search_after_weight_tuning_warns_that_layer_params_hold_no_weights(tmp_path, monkeypatch, caplog):
    from lightning_ptq.search import job

    monkeypatch.setattr(job, "search_layers", lambda *args, **kwargs: None)
    monkeypatch.setattr(job, "write_search_report", lambda *args, **kwargs: None)
    for weight_lr, warned in ((0.0, False), (0.05, True)):
        caplog.clear()
        cfg = compose_config(["+recipe=yolo_w4a4_search", f"calib.weight_lr={weight_lr}"])
        job.run_search(job.search_config(cfg.search, "max"), cfg.calib.weight_lr, tmp_path, qmodel=None,
                       calib_batches=[], evaluator=None, metric="map")
        assert ("layer_params.json holds bits and ranges only" in caplog.text) == warned
        assert ("quantized_state_dict.pt" in caplog.text) == warned

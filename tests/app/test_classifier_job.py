"""The classifier job, plain and with the per-layer search (``+recipe=classifier_w4a4_search``),
on a tiny configuration."""
import json

import pytest
from PIL import Image

from lightning_ptq.job import run_job
from lightning_ptq.core import UserError
from lightning_ptq.classify import SplitFolderNotFoundError
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.core.cached_training import shipped_dir
from lightning_ptq.quant import ConfigError
from lightning_ptq.search import PoolTooSmallError

TINY = ["logger=none", "trainer.enable_progress_bar=false",
        "data.generator_kwargs={splits: {train: 60, pool: 100, test: 40}}", "model.train.epochs=1", "calib.batch_size=16"]
SEARCH = ["search.calib_per_class=2", "search.val_per_class=4", "search.max_evaluations=30"]


def tiny_cfg(cache_dir, *overrides, search=True):
    return compose_config(["+recipe=classifier_w4a4_search", f"cache_dir={cache_dir}", *TINY,
                           *(SEARCH if search else ["~search"]), *overrides])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_search_job_on_balanced_sets_and_its_parameter_file_rebuilds_the_result(cache_dir, tmp_path):
    results = run_job(tiny_cfg(cache_dir, "search.threshold=0.0"), tmp_path / "search")
    tmp_path = tmp_path / "search"
    assert results["calib_images"] == 20  # 2 per class x 10 classes
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["evaluations"]["sensitivity"] == len(saved["layers"]) + 1
    assert saved["evaluations"]["search"] <= 30 + 1
    assert results["quant.acc"] == pytest.approx(results["search.test_final"])
    assert results["search.val_final"] >= results["search.val_start"]
    assert {"layer_params.json", "sensitivity.png", "results.json", "packed.pt"} <= {p.name for p in tmp_path.iterdir()}

    again = run_job(tiny_cfg(cache_dir, f"calib.layer_params={tmp_path / 'layer_params.json'}", search=False),
                tmp_path.parent / "applied")
    assert again["quant.acc"] == results["quant.acc"]  # the searched model, without searching


def test_plain_classifier_job_calibrates_on_the_first_pool_images(cache_dir, tmp_path):
    results = run_job(tiny_cfg(cache_dir, "calib.num_images=24", search=False), tmp_path)
    assert results["calib_images"] == 24 and "search.val_final" not in results
    assert 0.0 <= results["quant.acc"] <= 1.0 and results["size_ratio"] > 4


def test_the_shipped_classifier_keeps_its_accuracy_through_a_tiny_calibration(tmp_path):
    """The tiny test split is the first 40 images of the default one, where the shipped FP
    classifier is accurate; W4A4 must keep most of it (a collapse to chance fails here)."""
    shipped = next(shipped_dir().glob("classifier-*.pt"))
    data = [o for o in TINY if not o.startswith("model.")]
    results = run_job(compose_config(["+recipe=classifier_w4a4_search", f"cache_dir={tmp_path / 'cache'}", *data,
                                      "~search", "calib.num_images=24", f"model.checkpoint={shipped}"]), tmp_path / "run")
    assert results["fp.acc"] > 0.8  # measured: 0.90
    assert results["retention"] > 0.75  # measured: 0.889


def test_pool_too_small_and_wrong_loss(cache_dir, tmp_path):
    with pytest.raises(PoolTooSmallError, match=r"cannot give 2 calibration \+ 20 validation images per class"):
        run_job(tiny_cfg(cache_dir, "search.val_per_class=20"), tmp_path)
    with pytest.raises(ConfigError, match="calib.loss=fgl needs a detector; for a classifier model use output_mse"):
        run_job(tiny_cfg(cache_dir, "calib.loss=fgl"), tmp_path)


def test_a_user_imagefolder_without_the_pool_split_is_named(cache_dir, tmp_path):
    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "data" / split / "cat" / "0.png")
    with pytest.raises(SplitFolderNotFoundError, match=r"Split folder .*pool does not exist") as err:
        run_job(tiny_cfg(cache_dir, f"data.root={tmp_path / 'data'}", "data.generate_default=false"), tmp_path / "run")
    assert isinstance(err.value, UserError)  # the command line prints it without a traceback

"""The job on two processes (``trainer.strategy=ddp trainer.devices=2``, gloo on CPU), started
as a user starts it: the command line, whose extra process Lightning's launcher starts.

Both processes hold the same calibrated model (the job measures the largest difference from
rank 0's and writes it to results.json), rank 0 alone writes the run, and with ranges only the
two-process model is the one-process model, bit for bit (min / max ranges over the same batches).
"""
import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from lightning_ptq.core import distributed
from lightning_ptq.core.cached_training import shipped_dir
from lightning_ptq.core.errors import ConfigError

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")

# 16 calibration images in batches of 4: every process gets two images of each.
TINY = [
    "+recipe=yolo_w4a4", "logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
    "data.generator_kwargs={splits: {train: 16, calib: 16, val: 8, test: 8}}",
    "+model.kwargs.width_mult=0.125", "model.train.epochs=1", "model.train.batch_size=8", "model.train.val_every=1",
    "calib.num_images=16", "calib.batch_size=4", "calib.init_batches=2", "eval.num_vis_images=1", "num_threads=1",
]
TWO = ["trainer.strategy=ddp", "trainer.devices=2"]


def _job(cache_dir, run_dir, *overrides) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_ptq", *TINY, f"cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
               *overrides]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_two_processes_calibrate_one_model_and_rank_zero_writes_the_run(cache_dir, tmp_path):
    # learning kept whatever the held-out check says, so that the learned state is what is compared
    _job(cache_dir, tmp_path, *TWO, "calib.steps=4", "calib.keep_better=false", "calib.recon.steps=2")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["calib.ranks"] == 2
    assert results["calib.rank_difference"] == 0.0  # ranges, block reconstruction and learning agree
    assert results["calib.kept"] == "learned"
    assert results["calib_images"] == 16 and results["calib.holdout_images"] == 4  # the last batch, 2 images per rank
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # the second process ran the same command
    assert len(list(tmp_path.rglob("results.json"))) == 1


@pytest.mark.slow  # three jobs of two processes and one (about a minute on 2 CPU cores)
def test_ranges_on_two_processes_are_those_of_one(cache_dir, tmp_path):
    same = ["calib.steps=0", "quant.a_init=minmax"]
    _job(cache_dir, tmp_path / "one", *same)
    _job(cache_dir, tmp_path / "two", *TWO, *same)
    one, two = (torch.load(tmp_path / d / "quantized_state_dict.pt", weights_only=True) for d in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key
    assert json.loads((tmp_path / "two" / "results.json").read_text())["calib.ranks"] == 2


@pytest.mark.slow  # two classifier jobs, one of two processes (about a minute on 2 CPU cores)
def test_the_search_on_two_processes_chooses_what_one_process_chooses(tmp_path):
    # the shipped classifier with min / max ranges only: both processes start from the model of one
    shipped = next(shipped_dir().glob("classifier-*.pt"))
    search = ["+recipe=classifier_w4a4_search", "logger=none", "trainer.enable_progress_bar=false",
              "trainer.accelerator=cpu", "data.generator_kwargs={splits: {train: 60, pool: 100, test: 40}}",
              f"model.checkpoint={shipped}", "calib.batch_size=16", "quant.a_init=minmax", "num_threads=1",
              f"cache_dir={tmp_path / 'cache'}", "search.calib_per_class=2", "search.val_per_class=4",
              "search.threshold=0.0", "search.max_drop=0.0", "search.max_evaluations=24"]
    for run, processes in (("one", []), ("two", TWO)):
        done = subprocess.run([sys.executable, "-m", "lightning_ptq", *search, *processes,
                               f"hydra.run.dir={tmp_path / run}"], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "search.json").read_text()) for d in ("one", "two"))
    assert [(r["name"], r["sensitivity"], r["chosen"], r["w_bits"], r["a_bits"], r["tries"]) for r in two["layers"]] \
        == [(r["name"], r["sensitivity"], r["chosen"], r["w_bits"], r["a_bits"], r["tries"]) for r in one["layers"]]
    assert sum(r["tries"] for r in one["layers"]) > 0  # candidates were tried, not only the sensitivities
    assert (two["final_metric"], two["evaluations"]["search"]) == (one["final_metric"], one["evaluations"]["search"])
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["calib.ranks"] == 2 and results["search.val_final"] == two["final_metric"]
    assert len(list((tmp_path / "two").rglob("search.json"))) == 1


def test_a_sweep_cannot_start_processes():
    with pytest.raises(ConfigError, match=r"trainer.devices=2 x trainer.num_nodes=1 processes in a sweep \(-m\)"):
        distributed.launch({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, in_sweep=True)


def test_spawned_processes_are_refused_with_the_strategy_that_works():
    with pytest.raises(ConfigError, match=r"trainer.strategy='ddp_spawn' with 2 processes.*trainer.strategy=ddp"):
        distributed.launch({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"})


def test_a_batch_smaller_than_the_number_of_processes_is_named(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(distributed.TooFewImagesError, match=r"calibration batches: a batch of 1 image\(s\) for 2 "
                                                          r"processes.*calib.batch_size.*trainer.devices"):
        distributed.shard([(torch.zeros(2, 3, 4, 4), [{}, {}]), (torch.zeros(1, 3, 4, 4), [{}])])


def test_one_process_settings_drop_what_starts_processes():
    assert distributed.one_process({"accelerator": "cpu", "devices": 4, "strategy": "ddp", "num_nodes": 2,
                                    "precision": "32-true"}) == {"accelerator": "cpu", "devices": 1,
                                                                 "precision": "32-true"}
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]  # one process: every batch


def test_a_rank_gets_its_share_of_every_image_and_target(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    images, boxes = torch.arange(4.0).view(4, 1), [{"id": i} for i in range(4)]
    keypoints = {"points": torch.arange(4.0).view(2, 2), "stride": torch.tensor(8)}  # stride: not per image
    (x, t), (y, k) = distributed.shard([(images, boxes), (images[:2], keypoints)])
    assert x.tolist() == [[1.0], [3.0]] and t == [{"id": 1}, {"id": 3}]
    assert y.tolist() == [[1.0]] and k["points"].tolist() == [[2.0, 3.0]] and int(k["stride"]) == 8
    torchvision_batch = ([torch.zeros(3, 4, 4)] * 3, [{"id": i} for i in range(3)])
    assert distributed.shard([torchvision_batch])[0][1] == [{"id": 1}]

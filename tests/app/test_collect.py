"""The benchmark collector: run folders grouped by what the sweep varied, mean and spread over
seeds; and a real (tiny) benchmark sweep through Hydra's multirun, collected at its end."""
import json
import statistics
import subprocess
import sys

import pytest
import yaml

from lightning_ptq.collect import NoRunsError, collect, read_runs, varied_keys


def _run(root, num, overrides, results, method_label=None, metric="quant.map"):
    run = root / str(num)
    (run / ".hydra").mkdir(parents=True)
    seed = int(next(o.split("=")[1] for o in overrides if o.startswith("seed=")))
    config = {"seed": seed, "optimized_metric": metric, **({"method_label": method_label} if method_label else {})}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "results.json").write_text(json.dumps(results))


def test_runs_are_grouped_by_what_varied_and_summarised_over_seeds(tmp_path):
    maps = {("lsq", 0): 0.40, ("lsq", 1): 0.44, ("laq_fgl", 0): 0.50, ("laq_fgl", 1): 0.48}
    labels = {"lsq": "learned scales", "laq_fgl": "ours"}
    for num, ((method, seed), value) in enumerate(maps.items()):
        _run(tmp_path, num, ["+recipe=yolo_w4a4", f"+method={method}", f"seed={seed}", "+benchmark=b", "num_threads=1"],
             {"quant.map": value, "fp.map": 0.5, "quant.map50": value + 0.2, "calib_seconds": 10.0 + seed},
             labels[method])
    (tmp_path / "9").mkdir()  # a run that never finished: no results.json, left out
    runs = read_runs(tmp_path)
    assert len(runs) == 4 and varied_keys(runs) == ["+method"]  # constant overrides and the seed are not groups
    rows = collect(tmp_path, tmp_path / "out" / "bench", columns=["quant.map50"], command="python -m lightning_ptq -m x")
    by_label = {row["group"]["+method"]: row for row in rows}
    assert list(by_label) == ["learned scales", "ours"]
    ours = by_label["ours"]
    assert ours["seeds"] == [0, 1]
    assert ours["value"] == pytest.approx(0.49) and ours["value_std"] == pytest.approx(statistics.stdev([0.50, 0.48]))
    assert ours["ratio"] == pytest.approx(0.98) and ours["ratio_std"] == pytest.approx(statistics.stdev([1.0, 0.96]))
    assert ours["quant.map50"] == pytest.approx(0.69) and ours["calib_seconds"] == pytest.approx(10.5)
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["summary"][1]["ratio"] == pytest.approx(0.98) and len(saved["runs"]) == 4
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "| ours | quant.map | 0.4900 ± 0.0141 | 0.5000 | 0.980 ± 0.028 | 0.69 ± 0.01414 | 10 | - | 2 |" in table
    assert table.startswith("`python -m lightning_ptq -m x`")
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0


def test_a_folder_without_finished_runs_is_a_clear_error(tmp_path):
    with pytest.raises(NoRunsError, match=r"holds no finished run \(no \*/results.json\): give the folder of a sweep"):
        read_runs(tmp_path)


TINY = [
    "trainer.enable_progress_bar=false", "data.generator_kwargs={splits: {train: 16, calib: 8, val: 8, test: 8}}",
    "+model.kwargs.width_mult=0.125", "model.train.epochs=1", "model.train.batch_size=8", "model.train.val_every=1",
    "calib.num_images=8", "calib.init_batches=1", "calib.steps=2", "calib.batch_size=4", "eval.num_vis_images=1",
]


def test_a_benchmark_sweep_runs_each_method_and_seed_and_is_collected_at_its_end(tmp_path):
    """A benchmark config of the user's own (found through hydra.searchpath), run as the README says."""
    (tmp_path / "conf" / "benchmark").mkdir(parents=True)
    (tmp_path / "conf" / "benchmark" / "tiny.yaml").write_text(f"""# @package _global_
defaults:
  - override /logger: none
calib:
  image_seed: ${{seed}}
hydra:
  sweep:
    dir: {tmp_path}/runs
  sweeper:
    params:
      +recipe: yolo_w4a4
      +method: minmax,lsq
      seed: 0,1
  callbacks:
    collect:
      _target_: lightning_ptq.collect.Collect
      out: {tmp_path}/results/tiny
""")
    proc = subprocess.run([sys.executable, "-m", "lightning_ptq", "-m", f"hydra.searchpath=[file://{tmp_path}/conf]",
                           "+benchmark=tiny", f"cache_dir={tmp_path}/cache", *TINY],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert summary["varied"] == ["+method"]
    assert [row["group"]["+method"] for row in summary["summary"]] == ["min/max", "learned scales, output MSE"]
    runs = {(r["method_label"], r["seed"]): r["results"] for r in summary["runs"]}
    assert sorted(runs) == [("learned scales, output MSE", 0), ("learned scales, output MSE", 1), ("min/max", 0),
                            ("min/max", 1)]
    for row in summary["summary"]:
        label = row["group"]["+method"]
        assert row["seeds"] == [0, 1]
        assert row["value"] == pytest.approx(statistics.fmean(runs[(label, s)]["quant.map"] for s in (0, 1)))
        assert row["calib_peak_rss_mib"] > 0
    assert runs[("min/max", 0)]["calib_images"] == 8
    assert "+benchmark=tiny" in summary["command"]
    assert (tmp_path / "results" / "tiny.md").is_file() and (tmp_path / "results" / "tiny.png").is_file()

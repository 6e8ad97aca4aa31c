"""The real main job on the embedded default, from an empty cache (about 8 minutes on 2 cores).

Run with ``python -m pytest -q -m slow``. Checks the accuracy targets of the default path: the
FP detector is good but not saturated, and W8A8 (head included) keeps >= 98 % of its mAP.
"""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_job_from_scratch_meets_the_targets(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ptq", "+recipe=yolo_w8a8", "logger=none", f"cache_dir={tmp_path}/cache",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.50 <= results["fp.map"] <= 0.90
    assert results["retention"] >= 0.98
    assert list((tmp_path / "cache" / "models").glob("yolo-*.pt"))  # pretrained once, cached

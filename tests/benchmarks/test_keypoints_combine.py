"""Combining keypoint benchmark folders counts a run found in several of them once."""
from benchmarks.keypoints import unique_runs


def _run(precision: str, seed: int, nme: float) -> dict:
    return {"grid": 16, "variant": "cosine_comp", "beta": 10.0, "precision": precision, "seed": seed, "nme": nme}


def test_repeated_fp32_runs_count_once_and_quantized_runs_all_stay():
    first = [_run("FP32", 0, 0.030), _run("W4A4", 0, 0.033)]
    second = [_run("FP32", 0, 0.030), _run("W8A8", 0, 0.030), _run("FP32", 1, 0.031)]
    runs = unique_runs(first + second)
    assert [(r["precision"], r["seed"]) for r in runs] == [("FP32", 0), ("W4A4", 0), ("W8A8", 0), ("FP32", 1)]

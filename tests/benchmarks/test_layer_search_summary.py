"""The per-layer search benchmark's pool thinning and summaries compute what their tables claim."""
import pytest

from benchmarks.layer_search import detector_selection_table, long_tail, summarise_classifier


def test_long_tail_keeps_decay_to_the_power_of_the_class():
    labels = [i % 4 for i in range(400)]  # 100 per class
    kept = long_tail(labels, 0.5)
    counts = [sum(labels[i] == c for i in kept) for c in range(4)]
    assert counts == [100, 50, 25, 12] and kept == sorted(kept)


def _run(selection, init, start, final, seed):
    return {"selection": selection, "init": init, "seed": seed, "fp_test": 0.9, "test_start": start,
            "test_final": final, "val_start": start, "val_final": final, "minutes": 0.1, "evaluations": 10,
            "avg_w_bits": 4.0, "avg_a_bits": 4.0}


def test_gap_recovered_is_per_run_on_test():
    rows = summarise_classifier([_run("balanced", "minmax", 0.5, 0.7, 0), _run("balanced", "minmax", 0.7, 0.8, 1)])
    (row,) = rows
    assert row["gap_recovered"] == pytest.approx((0.5 + 0.5) / 2)  # (0.7-0.5)/(0.9-0.5), (0.8-0.7)/(0.9-0.7)
    assert row["gap_recovered_min"] == pytest.approx(0.5) and row["n"] == 2


def test_detector_selection_table_has_one_row_per_selection():
    runs = [{"selection": s, "seed": k, "fp_test": 0.57, "test_start": 0.45, "test_final": 0.49 + k / 100,
             "val_start": 0.45, "val_final": 0.48, "evaluations": 150, "minutes": 5.0, "avg_w_bits": 4.1,
             "avg_a_bits": 4.2, "calib_images": 167} for s in ("balanced", "random") for k in (0, 1)]
    table = detector_selection_table(runs)
    assert [r[0] for r in table["rows"]] == ["balanced", "random"]
    assert table["rows"][0][2] == "0.4950 ± 0.0071"

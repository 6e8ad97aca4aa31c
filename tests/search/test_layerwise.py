import json
import logging

import pytest
import torch

from lightning_ptq.quant import ConfigError, QuantConfig, quantize, quantized_layers
from lightning_ptq.search import (
    FunctionEvaluator, LayerParamsError, SearchConfig, StagedEvaluator, accuracy, apply_layer_params, layer_params,
    save_layer_params, search_layers,
)
from lightning_ptq.search.report import layer_rows, plot_sensitivity


def _full(val):
    labels = torch.cat([y for _, y in val])
    return FunctionEvaluator(lambda m: accuracy(torch.cat([m(x) for x, _ in val]), labels))


def test_staged_evaluator_matches_full_evaluation_after_changes(blobs_task, quantized):
    model, calib, val = blobs_task
    q = quantized(model, calib)
    staged, full = StagedEvaluator(val), _full(val)
    assert staged.reset(q) == pytest.approx(full(q))
    layer = quantized_layers(q)["1.2"]
    layer.input_quant.disable()  # a change in stage 1: stage 0's cached output is still valid
    assert staged(q, "1.2") == pytest.approx(full(q))
    staged.commit(q, "1.2")
    assert staged(q, "2") == pytest.approx(full(q))  # stage 2 now starts from the refreshed cache
    with pytest.raises(KeyError, match="not inside a top-level stage"):
        staged(q, "nope.0")


def test_sensitivity_is_the_drop_with_only_that_layer_quantized(blobs_task, quantized):
    model, calib, val = blobs_task
    q = quantized(model, calib)
    full = _full(val)
    fp = full(model)
    result = search_layers(q, calib, StagedEvaluator(val), SearchConfig(target=0.0), progress=False)
    for record in result.layers:  # reference: quantize that one layer only
        alone = quantized(model, calib)
        for name, layer in quantized_layers(alone).items():
            if name != record.name:
                for quantizer in layer.quantizers:
                    quantizer.disable()
        assert record.sensitivity == pytest.approx(fp - full(alone), abs=1e-6)
    assert result.fp_metric == pytest.approx(fp)
    assert result.evaluations["sensitivity"] == len(result.layers) + 1
    assert result.evaluations["search"] == 1 and result.reached  # the goal 0.0 holds from the start


def test_search_recovers_accuracy_and_its_parameter_file_rebuilds_the_model(blobs_task, quantized, tmp_path):
    model, calib, val = blobs_task
    q = quantized(model, calib)
    full = _full(val)
    start = full(q)
    result = search_layers(q, calib, StagedEvaluator(val), SearchConfig(threshold=0.001), progress=False)
    assert result.start_metric == pytest.approx(start)
    assert result.final_metric == pytest.approx(full(q))  # the report tells the truth about the model
    assert result.final_metric > start + 0.005
    assert any(r.chosen != "first" for r in result.layers if r.target)
    assert result.evaluations["search"] <= SearchConfig().max_evaluations + 1

    path = save_layer_params(q, tmp_path / "layer_params.json", result.float_layers)
    fresh = quantize(model, QuantConfig(w_bits=2, a_bits=3, w_init="minmax", a_init="minmax", learnable=False))
    apply_layer_params(fresh, path)
    x = val[0][0]
    torch.testing.assert_close(fresh(x), q(x))
    assert json.loads(path.read_text())["format"] == "lightning_ptq.layer_params/1"


def test_float_fallback_and_more_bits_when_ranges_cannot_help(blobs_task, quantized, tmp_path):
    model, calib, val = blobs_task
    q = quantized(model, calib, w_bits=2, a_bits=2)
    result = search_layers(q, calib, StagedEvaluator(val), SearchConfig(threshold=0.0, max_drop=0.0, clip_ratios=(),
                                                                      percentiles=()), progress=False)
    chosen = {r.name: r for r in result.layers if r.target}
    assert any(r.w_bits is None or r.w_bits > 2 for r in chosen.values())  # ranges alone did not do it
    for name in result.float_layers:
        assert name not in quantized_layers(q)
    avg = result.average_bits()
    assert avg["avg_w_bits"] > 2
    fresh = quantize(model, QuantConfig(w_bits=2, a_bits=2, w_init="minmax", a_init="minmax", learnable=False))
    apply_layer_params(fresh, layer_params(q, result.float_layers))
    torch.testing.assert_close(fresh(val[0][0]), q(val[0][0]))


def test_unreachable_target_finishes_with_the_best_found_and_a_warning(blobs_task, quantized, caplog):
    model, calib, val = blobs_task
    q = quantized(model, calib)
    with caplog.at_level(logging.WARNING):
        result = search_layers(q, calib, StagedEvaluator(val), SearchConfig(target=1.01, max_evaluations=20,
                                                                          allow_float=False), progress=False)
    assert not result.reached and result.final_metric >= result.start_metric
    assert result.evaluations["search"] <= 21
    assert "did not reach its goal" in caplog.text


def test_min_mode_and_plain_function_evaluator(blobs_task, quantized):
    model, calib, val = blobs_task
    q = quantized(model, calib)
    labels = torch.cat([y for _, y in val])

    def error_rate(m):  # lower is better
        return 1.0 - accuracy(torch.cat([m(x) for x, _ in val]), labels)

    start = error_rate(q)
    result = search_layers(q, calib, error_rate, SearchConfig(mode="min", threshold=0.001), progress=False)
    assert result.fp_metric < result.start_metric == pytest.approx(start)
    assert result.final_metric == pytest.approx(error_rate(q)) and result.final_metric < start


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "best"}, "search.mode='best' is not allowed"),
    ({"max_drop": None}, "give target"),
    ({"more_bits": (9,)}, "more_bits entry=9 is not a supported bit width"),
    ({"max_evaluations": 0}, "search.max_evaluations=0 must be a positive integer"),
    ({"clip_ratios": (1.5,)}, "clip_ratios entry 1.5"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**kwargs)


def test_parameter_file_errors(blobs_task, quantized, tmp_path):
    model, calib, _ = blobs_task
    q = quantized(model, calib)
    params = layer_params(q)
    params["layers"]["head.9"] = params["layers"].pop("2")
    with pytest.raises(LayerParamsError, match=r"names layers \['head.9'\] that are not quantized layers"):
        apply_layer_params(quantized(model, calib), params)
    partial = layer_params(q)
    del partial["layers"]["0.0"]
    apply_layer_params(quantized(model, calib), partial)  # fine: the file updates what it names
    with pytest.raises(LayerParamsError, match=r"it lacks the quantized layers \['0.0'\]"):
        apply_layer_params(quantized(model, calib), partial, strict=True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayerParamsError, match="is not valid JSON"):
        apply_layer_params(q, tmp_path / "bad.json")
    with pytest.raises(LayerParamsError, match="does not exist"):
        apply_layer_params(q, tmp_path / "missing.json")


def test_report_rows_and_plot(blobs_task, quantized, tmp_path):
    model, calib, val = blobs_task
    q = quantized(model, calib)
    result = search_layers(q, calib, StagedEvaluator(val), SearchConfig(threshold=0.001), progress=False)
    columns, rows = layer_rows(result)
    assert [r[0] for r in rows] == list(quantized_layers(quantized(model, calib)))
    assert columns[:3] == ["layer", "sensitivity", "target"]
    png = plot_sensitivity(result, tmp_path / "sensitivity.png", 0.001)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_nan_metric_stops_the_search_naming_the_layer_and_leaves_quantization_on(blobs_task, quantized):
    model, calib, _ = blobs_task
    q = quantized(model, calib)
    calls = []

    def metric(m):
        calls.append(1)
        return float("nan") if len(calls) == 3 else 0.5

    with pytest.raises(FloatingPointError, match=r"the validation metric is nan after changing layer '1.0'"):
        search_layers(q, calib, metric, progress=False)
    assert all(quantizer.is_active for layer in quantized_layers(q).values() for quantizer in layer.quantizers)

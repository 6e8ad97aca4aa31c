"""The Reg-PTQ benchmark's layer settings and method table name real layers and valid settings."""
import pytest
import torch
from omegaconf import OmegaConf

from benchmarks.reg_ptq import DEFAULT_METHODS, FEATURE_MODULES, METHODS, PAPER_SETTING, resolve_placeholders
from lightning_ptq.calib.features import match_modules
from lightning_ptq.pipeline import check_calib_config
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.detection import FCOSNet, YOLO
from lightning_ptq.quant import QuantConfig, quantize
from lightning_ptq.quant.layers import QuantLayerMixin

TINY = {"yolo": lambda: YOLO(3, width_mult=0.125, depth_mult=0.33, image_size=64),
        "fcos": lambda: FCOSNet(3, image_size=64, fpn_channels=32, num_convs=1)}


@pytest.mark.parametrize("family", sorted(PAPER_SETTING))
def test_paper_setting_keeps_first_layer_8_bit_and_last_layers_float(family):
    model = TINY[family]().eval()
    q = quantize(model, QuantConfig(w_bits=4, a_bits=4, overrides=PAPER_SETTING[family]))
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantLayerMixin)}
    first = convs[0]
    assert layers[first].weight_quant.bits == 8 and layers[first].input_quant.bits == 8
    floats = [n for n in convs if n not in layers]
    assert floats and all(n.startswith("head.") for n in floats)
    assert all(m.weight_quant.bits == 4 for n, m in layers.items() if n != first)


def test_every_method_is_a_valid_configuration():
    assert set(DEFAULT_METHODS) <= set(METHODS)
    base = compose_config([]).calib
    for name, (label, quant, calib) in METHODS.items():
        QuantConfig.from_dict({**quant, "w_bits": 4, "a_bits": 4})
        merged = OmegaConf.merge(base, resolve_placeholders(calib, 1e-3, 0.5, "yolo"))  # unknown keys would fail (struct)
        check_calib_config(merged)
        assert merged.weight_lr == (1e-3 if name.endswith("_w") and merged.steps > 0 else 0.0), name
        assert merged.recon.weight_lr == (1e-3 if name.endswith("_w") and merged.recon.steps > 0 else 0.0), name
        assert merged.features.weight == (0.5 if "_feat_" in name or "_fisher_" in name else 0.0), name
        assert merged.features.fisher == ("_fisher_" in name), name
        assert isinstance(label, str) and label.strip(), name
    labels = [label for label, _, _ in METHODS.values()]
    assert len(set(labels)) == len(labels), "two methods share a label: their rows could not be told apart"


@pytest.mark.parametrize("family", sorted(FEATURE_MODULES))
def test_feature_modules_name_modules_of_both_models(family):
    model = TINY[family]().eval()
    q = quantize(model, QuantConfig(w_bits=4, a_bits=4))
    assert match_modules(model, FEATURE_MODULES[family]) == FEATURE_MODULES[family]
    assert match_modules(q, FEATURE_MODULES[family]) == FEATURE_MODULES[family]


def _doc(weight_lr: float, maps: list[float]) -> dict:
    runs = [{"bits": "W4A4", "method": "ours", "setting": "full", "seed": seed, "weight_lr": weight_lr, "map": m,
             "map50": m, "map75": m, "retention": m / 0.5, "calib_seconds": 1.0, "peak_rss_mib": 1.0}
            for seed, m in enumerate(maps)]
    return {"fp": {"map": 0.5, "map50": 0.7, "map75": 0.6}, "setting": "full", "split": "val", "runs": runs,
            "config": {}}


def test_combine_merges_runs_and_labels_a_learning_rate_sweep(tmp_path, monkeypatch):
    import json
    import sys

    from benchmarks import reg_ptq

    paths = []
    for i, (lr, maps) in enumerate([(0.05, [0.40, 0.42]), (0.1, [0.30])]):
        paths.append(tmp_path / f"part{i}.json")
        paths[-1].write_text(json.dumps(_doc(lr, maps)))
    out = tmp_path / "all_w0.05"  # a dot in the name must not be taken for a suffix
    monkeypatch.setattr(sys, "argv", ["reg_ptq.py", "--combine", *map(str, paths), "--out", str(out)])
    reg_ptq.main()
    summary = {r["method"]: r for r in json.loads((tmp_path / "all_w0.05.json").read_text())["summary"]}
    assert summary["ours, weight_lr 0.05"]["map"] == pytest.approx(0.41)
    assert summary["ours, weight_lr 0.05"]["seeds"] == 2
    assert summary["ours, weight_lr 0.1"]["map"] == pytest.approx(0.30)
    assert "Measured on the val split" in (tmp_path / "all_w0.05.md").read_text()
    assert not any("feature_weight" in method for method in summary)  # no feature sweep, no label
    assert (tmp_path / "all_w0.05_W4A4.png").is_file()


def test_combine_labels_a_feature_weight_sweep(tmp_path, monkeypatch):
    import json
    import sys

    from benchmarks import reg_ptq

    paths = []
    for i, (fw, maps) in enumerate([(1.0, [0.40]), (10.0, [0.30])]):
        doc = _doc(0.05, maps)
        doc["runs"] = [{**run, "feature_weight": fw} for run in doc["runs"]]
        paths.append(tmp_path / f"part{i}.json")
        paths[-1].write_text(json.dumps(doc))
    out = tmp_path / "features"
    monkeypatch.setattr(sys, "argv", ["reg_ptq.py", "--combine", *map(str, paths), "--out", str(out)])
    reg_ptq.main()
    summary = {r["method"]: r for r in json.loads((tmp_path / "features.json").read_text())["summary"]}
    assert summary["ours, feature_weight 1"]["map"] == pytest.approx(0.40)
    assert summary["ours, feature_weight 10"]["map"] == pytest.approx(0.30)

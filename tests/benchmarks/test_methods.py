"""The method and benchmark configs (conf/method, conf/benchmark) compose into valid settings that
do what their names say, and every sweep value of every benchmark composes."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_ptq.calib.features import match_modules
from lightning_ptq.detection import YOLO, FCOSNet
from lightning_ptq.hydra_setup import compose_config, config_dir
from lightning_ptq.pipeline import check_calib_config
from lightning_ptq.quant import QuantConfig, quantize

METHODS = sorted(p.stem for p in (Path(config_dir()) / "method").glob("*.yaml"))
BENCHMARKS = sorted(p.stem for p in (Path(config_dir()) / "benchmark").glob("*.yaml"))
RANGES_ONLY = {"minmax", "percentile", "mse", "ranges", "qdrop"}
TINY = {"yolo_nano": lambda: YOLO(3, width_mult=0.125, depth_mult=0.33, image_size=64),
        "fcos_r18": lambda: FCOSNet(3, image_size=64, fpn_channels=32, num_convs=1)}


@pytest.mark.parametrize("recipe", ["yolo_w4a4", "fcos_w4a4"])
@pytest.mark.parametrize("method", METHODS)
def test_a_method_on_a_recipe_sets_what_its_name_says(recipe, method):
    cfg = compose_config([f"+recipe={recipe}", f"+method={method}", "calib.weight_lr=0.03"])
    recipe_cfg = compose_config([f"+recipe={recipe}"])
    QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))
    calib = check_calib_config(cfg.calib)
    assert (cfg.quant.w_bits, cfg.quant.a_bits) == (recipe_cfg.quant.w_bits, recipe_cfg.quant.a_bits)
    if method == "laq_all":
        assert list(cfg.quant.laq_patterns) == ["*"] and cfg.quant.laq_on == "both"
    elif method.startswith("laq"):
        assert cfg.quant.laq_patterns == recipe_cfg.quant.laq_patterns  # the recipe's LAQ layers
    else:
        assert list(cfg.quant.laq_patterns) == []
    assert (calib.steps == 0) == (method in RANGES_ONLY)
    if method not in RANGES_ONLY:  # ranges-only methods learn nothing, so their loss does not matter
        assert calib.loss == ("fgl" if "fgl" in method else "output_mse")
    assert (calib.recon.steps > 0) == ("recon" in method or method == "qdrop")
    if calib.recon.steps:
        assert calib.recon.weight_lr == calib.weight_lr == 0.03  # block recon tunes weights when the job does
    assert (calib.features.weight > 0) == ("feat" in method or "fisher" in method)
    assert calib.features.fisher == ("fisher" in method)
    if calib.features.weight:
        assert calib.features.modules == []  # the model's own feature_modules


def test_every_method_has_its_own_label():
    labels = [compose_config([f"+method={m}"]).method_label for m in METHODS]
    assert all(isinstance(label, str) and label.strip() for label in labels)
    assert len(set(labels)) == len(labels), "two methods share a label: their rows could not be told apart"


@pytest.mark.parametrize("model", sorted(TINY))
def test_feature_modules_of_the_detectors_name_modules_of_both_models(model):
    net = TINY[model]().eval()
    modules = list(net.feature_modules)
    assert match_modules(net, modules) == modules
    assert match_modules(quantize(net, QuantConfig(w_bits=4, a_bits=4)), modules) == modules


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_sweep_value_of_a_benchmark_composes_into_valid_settings(name):
    hydra = OmegaConf.load(Path(config_dir()) / "benchmark" / f"{name}.yaml").hydra
    params = {k: str(v).split(",") for k, v in hydra.sweeper.params.items()}
    assert hydra.callbacks.collect._target_ == "lightning_ptq.collect.Collect"
    assert hydra.callbacks.collect.out == f"benchmarks/results/{name}"
    assert OmegaConf.to_container(hydra.sweep)["dir"].startswith(f"benchmarks/runs/{name}/")
    first = {k: v[0] for k, v in params.items()}
    for key, values in params.items():
        for value in values:  # each value once, the other parameters at their first value
            overrides = [f"{k}={value if k == key else v}" for k, v in first.items()]
            cfg = compose_config([*overrides, f"+benchmark={name}"])
            check_calib_config(cfg.calib)
            QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))
            assert not cfg.logger  # benchmarks write no W&B runs

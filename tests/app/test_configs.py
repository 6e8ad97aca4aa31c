"""Every config group and recipe composes and instantiates; bad values fail with clear messages."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_ptq.pipeline import check_calib_config
from lightning_ptq.hydra_setup import compose_config, recipe_names
from lightning_ptq.quant import ConfigError, QuantConfig


def test_recipes_exist():
    assert {"yolo_w4a4", "yolo_w4a8", "yolo_w8a8", "fcos_w4a4", "fcos_w4a8", "fcos_w8a8",
            "keypoint_w8a8", "keypoint_w4a4", "classifier_w4a4_search", "yolo_w4a4_search", "yolov8n_w4a4",
            "yolov8n_w8a8", "yolov8n_w4a8", "yolo11n_w4a4", "yolo11n_w4a8", "yolo11n_w8a8", "retinanet_w4a4", "retinanet_w8a8", "ssdlite_w4a4",
            "ssdlite_w8a8", "retinanet_w4a8", "ssdlite_w4a8"} <= set(recipe_names())


DATA_FOLDERS = {"keypoint": "keypoints", "classifier": "classes"}


@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_composes_and_validates(recipe, tmp_path):
    cfg = compose_config([f"+recipe={recipe}", f"cache_dir={tmp_path}", "logger=none"])
    qcfg = QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))
    w, a = re.search(r"_w(\d)a(\d)", recipe).groups()  # <model>_w<W>a<A>[_search]
    assert (qcfg.w_bits, qcfg.a_bits) == (int(w), int(a))
    check_calib_config(cfg.calib)
    assert (cfg.get("search") is not None) == recipe.endswith("_search")
    datamodule = instantiate(cfg.data)
    assert Path(datamodule.root) == tmp_path / "data" / DATA_FOLDERS.get(recipe.split("_")[0], "shapes")


def test_logger_config_instantiates_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["+recipe=yolo_w4a4"])
    node = OmegaConf.to_container(cfg.logger)
    node["save_dir"] = str(tmp_path)  # ${hydra:...} only resolves inside a Hydra run
    logger = instantiate(node)
    assert type(logger).__name__ == "WandbLogger"
    assert cfg.logger.mode == "offline"


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match=r"Could not find 'recipe/yolo_w3a3'[\s\S]*yolo_w4a4"):
        compose_config(["+recipe=yolo_w3a3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("quant.w_bits=16", r"w_bits=16 is not a supported bit width: use an integer from 2 to 8"),
        ("quant.a_bits=1", r"a_bits=1 is not a supported bit width"),
        ("quant.w_init=maxmin", r"w_init='maxmin' is not allowed"),
    ],
)
def test_bad_quant_values(override, message):
    cfg = compose_config(["+recipe=yolo_w4a4", override])
    with pytest.raises(ValueError, match=message):
        QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))


@pytest.mark.parametrize(
    "override, message",
    [
        ("calib.loss=kl", r"calib.loss='kl' is unknown: choose one of output_mse"),
        ("calib.num_images=0", r"calib.num_images=0 must be a positive integer"),
        ("calib.steps=-1", r"calib.steps=-1 must be an integer >= 0"),
        ("calib.lr=0", r"calib.lr=0.0 must be > 0"),  # typed by the schema: 0 arrives as a float
        ("calib.drop_prob=-0.1", r"calib.drop_prob=-0.1 must lie in \[0, 1\)"),
        ("calib.weight_lr=-0.001", r"calib.weight_lr=-0.001 must be >= 0 \(0: weights stay fixed\)"),
        ("calib.recon.steps=-5", r"calib.recon.steps=-5 must be an integer >= 0"),
        ("calib.recon.drop_prob=1.0", r"calib.recon.drop_prob=1.0 must lie in \[0, 1\)"),
        ("calib.recon.max_layers=0", r"calib.recon.max_layers=0 must be a positive integer"),
        ("calib.fgl.combine=both", r"calib.fgl.combine='both' is unknown: choose one of union, intersection"),
        ("calib.recon.weight_lr=-0.01", r"calib.recon.weight_lr=-0.01 must be >= 0"),
        ("calib.features.weight=-1", r"calib.features.weight=-1.0 must be >= 0"),
        ("calib.holdout=0.6", r"calib.holdout=0.6 must lie in \[0, 0.5\)"),
    ],
)
def test_bad_calib_values(override, message):
    with pytest.raises(ValueError, match=message):
        check_calib_config(compose_config([override]).calib)


def test_cli_reports_bad_bit_width_before_any_work(tmp_path):
    """The real entry point: a bad bit width stops at once with the message, nothing trained."""
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ptq", "+recipe=yolo_w4a4", "quant.w_bits=9", "logger=none",
         f"cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode != 0
    assert "w_bits=9 is not a supported bit width" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_configs_found_after_plain_non_editable_install(tmp_path):
    """Build a wheel, install it (no deps) into a folder and compose a recipe from elsewhere."""
    repo = Path(__file__).resolve().parents[2]
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(repo)],
        check=True, capture_output=True, timeout=300,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), *map(str, wheel_dir.glob("*.whl"))],
        check=True, capture_output=True, timeout=300,
    )
    code = (
        "import lightning_ptq, sys; from lightning_ptq.hydra_setup import config_dir, recipe_names;"
        "assert lightning_ptq.__file__.startswith(sys.argv[1]), lightning_ptq.__file__;"
        "print(config_dir()); print(recipe_names())"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); exec({code!r})", str(target)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout and "yolo_w4a4" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ptq", "+recipe=yolo_w8a8", "logger=none", "--cfg", "job"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "w_bits: 8" in proc.stdout


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "keypoint").glob("*.yaml")))
def test_every_keypoint_option_builds_its_model(option):
    from lightning_ptq.keypoints.task import keypoint_model_kwargs
    from lightning_ptq.keypoints.model import KeypointNet

    cfg = compose_config(["+recipe=keypoint_w4a4", f"keypoint={option}", "logger=none"])
    model = KeypointNet(7, **keypoint_model_kwargs(cfg))
    assert model.compensate == option.endswith("_comp")
    assert model.logits == ("linear" if option.startswith("plain") else "cosine")


@pytest.mark.parametrize("recipe, task", [("yolo_w4a4", "DetectionTask"), ("fcos_w4a4", "DetectionTask"),
                                          ("keypoint_w4a4", "KeypointTask"),
                                          ("classifier_w4a4_search", "ClassificationTask")])
def test_the_config_chooses_the_task(recipe, task, tmp_path):
    from lightning_ptq.core.task import Task
    from lightning_ptq.job import make_task

    made = make_task(compose_config([f"+recipe={recipe}", f"cache_dir={tmp_path}", "logger=none"]))
    assert type(made).__name__ == task and isinstance(made, Task)


@pytest.mark.parametrize("target, message", [
    ("collections.OrderedDict", r"model.task._target_='collections.OrderedDict' does not implement the Task "
                                r"protocol \(lightning_ptq.core.task.Task\): it lacks name, metric, metric_label, "
                                r"maximize, searchable, check, load, evaluate, calibration_sets"),
    ("lightning_ptq.nope.Task", r"model.task._target_='lightning_ptq.nope.Task' is not a class that can be imported"),
])
def test_a_task_target_that_is_not_a_task_is_named_with_what_it_lacks(target, message, tmp_path):
    from lightning_ptq.job import run_job

    cfg = compose_config(["+recipe=yolo_w4a4", f"cache_dir={tmp_path / 'cache'}", "logger=none",
                          f"model.task._target_={target}"])
    with pytest.raises(ConfigError, match=message):
        run_job(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # nothing loaded or written


def test_feature_matching_and_fgl_need_what_the_model_names():
    """Empty calib.features.modules means the model's own feature_modules; a model without them,
    or FGL on a model without an adapter, is named with the fix."""
    from torch import nn

    from lightning_ptq.calib import FeatureMatching
    from lightning_ptq.detection import YOLO
    from lightning_ptq.pipeline import calibration_loss

    cfg = check_calib_config(compose_config(["+recipe=yolo_w4a4", "calib.features.weight=1"]).calib)
    loss = calibration_loss(cfg, YOLO(3, width_mult=0.125, image_size=64))
    assert isinstance(loss, FeatureMatching) and loss.patterns == list(YOLO.feature_modules)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ConfigError, match=r"calib.features.modules is empty and the model names no feature_modules"):
        calibration_loss(check_calib_config(compose_config(["calib.features.weight=1"]).calib), plain)
    with pytest.raises(ConfigError, match=r"calib.loss=fgl reads the detector's class logits and boxes through its "
                                          r"adapter\(\), and Sequential has none: implement the Detector protocol .*"
                                          r"README, 'Your own detector'"):
        calibration_loss(check_calib_config(compose_config(["calib.loss=fgl"]).calib), plain)


def test_every_trainer_setting_reaches_the_calibration_trainer(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from lightning_ptq.calib import api
    from lightning_ptq.pipeline import quantize_and_calibrate

    seen = {}

    def recording(what, **kwargs):
        seen.update(kwargs)
        return real(what, **kwargs)

    real = api.library_trainer
    monkeypatch.setattr(api, "library_trainer", recording)
    cfg = compose_config(["+recipe=yolo_w4a4", f"cache_dir={tmp_path}", "logger=none", "calib.loss=output_mse",
                          "calib.steps=2", "calib.init_batches=1", "trainer.precision=bf16-mixed",
                          "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"])
    fp = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    quantize_and_calibrate(fp, QuantConfig(w_bits=8, a_bits=8), [torch.rand(2, 3, 8, 8)], cfg.calib, cfg.trainer)
    assert {k: seen[k] for k in ("precision", "accelerator", "devices", "enable_progress_bar")} == {
        "precision": "bf16-mixed", "accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


@pytest.mark.parametrize("override, message", [
    ("calib.stesp=3", r"'calib.stesp' is not a setting: calib has no key 'stesp' \(its keys: batch_size, .*\)\. "
                      r"Did you mean calib.steps\?$"),  # a schema group takes no new keys: no + hint
    ("model.chekpoint=x", r"Did you mean model.checkpoint\? To add a new key on purpose, write \+model.chekpoint=x\."),
    ("calibration.steps=3", r"the config has no key 'calibration' .* Did you mean calib\?"),
    ("quant.wbits=4", r"Did you mean quant.w_bits\?"),
])
def test_a_misspelled_setting_is_named_with_the_allowed_keys_and_the_closest(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["+recipe=yolo_w4a4", override])


def test_the_command_line_names_a_misspelled_setting_in_one_paragraph(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lightning_ptq", "+recipe=yolo_w4a4", "export=onnx",
                           "export.opsett=13", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lightning_ptq: ConfigError: 'export.opsett' is not a setting" in proc.stderr
    assert "Did you mean export.opset?" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where, key, message", [
    ((), "stesp", r"calib.stesp is not a setting \(allowed: .*\); did you mean calib.steps\?"),
    (("fgl",), "conf_th", r"calib.fgl.conf_th is not a setting \(allowed: conf_thr, .*\); did you mean "
                          r"calib.fgl.conf_thr\?"),
    (("recon",), "max_layer", r"did you mean calib.recon.max_layers\?"),
    (("features",), "wieght", r"did you mean calib.features.weight\?"),
])
def test_a_misspelled_key_in_a_calib_file_is_named_with_the_closest(where, key, message):
    """A recipe or config file (not an override, which Hydra checks) with a misspelled key."""
    node = OmegaConf.to_container(compose_config(["+recipe=yolo_w4a4"]).calib)
    target = node
    for part in where:
        target = target[part]
    target[key] = 1
    with pytest.raises(ConfigError, match=message):
        check_calib_config(OmegaConf.create(node))

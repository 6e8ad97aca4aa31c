"""The typed schemas of the calib, search and export groups (Hydra's ConfigStore): what Hydra
rejects while composing, and the objects the job builds from the groups."""
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lightning_ptq.calib import CalibConfig, CalibJobConfig, FGLConfig
from lightning_ptq.core import ConfigError
from lightning_ptq.export import ExportConfig
from lightning_ptq.hydra_setup import SCHEMAS, compose_config
from lightning_ptq.pipeline import check_calib_config, export_config
from lightning_ptq.search import SearchJobConfig
from lightning_ptq.search.job import search_config


def _user_recipe(tmp_path, text: str) -> list[str]:
    """Overrides that compose the user's own recipe ``my_recipe`` from ``tmp_path``."""
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "my_recipe.yaml").write_text("# @package _global_\n" + text)
    return [f"hydra.searchpath=[file://{tmp_path}]", "+recipe=my_recipe"]


def test_each_schema_types_its_group_and_the_default_files_fit_it():
    cfg = compose_config(["+recipe=yolo_w4a4_search", "export=all"])
    for group, schema in SCHEMAS.items():
        assert OmegaConf.get_type(cfg[group]) is schema
    assert isinstance(cfg.calib.steps, int) and isinstance(cfg.calib.fgl.conf_thr, float)


def test_a_misspelled_key_in_the_users_recipe_file_is_named_with_the_closest(tmp_path):
    overrides = _user_recipe(tmp_path, "calib:\n  fgl:\n    iou_th: 0.2\n")
    with pytest.raises(ConfigError, match=r"calib.fgl.iou_th is not a setting \(allowed: conf_thr, iou_thr, .*\); "
                                          r"did you mean calib.fgl.iou_thr\?"):
        compose_config(overrides)


def test_a_value_of_the_wrong_type_stops_while_composing_with_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"calib.steps: Value 'many' of type 'str' could not be converted to Integer"):
        compose_config(["calib.steps=many"])
    with pytest.raises(ConfigError, match=r"search.calib_per_class: .* could not be converted to Integer"):
        compose_config(_user_recipe(tmp_path, "defaults:\n  - override /search: default\nsearch:\n  calib_per_class: lots\n"))


def test_the_command_line_names_a_misspelled_key_of_a_recipe_file(tmp_path):
    (tmp_path / "conf").mkdir()
    overrides = _user_recipe(tmp_path / "conf", "calib:\n  stesp: 3\n")
    proc = subprocess.run([sys.executable, "-m", "lightning_ptq", *overrides, f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lightning_ptq: ConfigError: calib.stesp is not a setting" in proc.stderr
    assert "did you mean calib.steps?" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_job_builds_each_group_once_as_its_dataclass():
    cfg = compose_config(["+recipe=yolo_w4a4", "search=default", "export=integer"])
    calib = check_calib_config(cfg.calib)
    assert isinstance(calib, CalibJobConfig) and isinstance(calib, CalibConfig)  # calibrate() takes it as is
    assert isinstance(calib.fgl, FGLConfig) and calib.loss == "fgl" and calib.weight_lr == 0.05
    export = export_config(cfg.export)
    assert isinstance(export, ExportConfig) and export.formats == ["integer"]
    search = search_config(cfg.search, "max")
    assert isinstance(search, SearchJobConfig) and search.mode == "max" and search.percentiles == (99.9, 99.99)
    assert export_config(compose_config([]).export).formats == []


def test_search_mode_is_the_tasks_and_may_not_contradict_it():
    cfg = compose_config(["+recipe=yolo_w4a4_search", "search.mode=min"])
    with pytest.raises(ConfigError, match=r"search.mode='min', but this task's metric is maximised \(mode='max'\): "
                                          r"drop search.mode"):
        search_config(cfg.search, "max")
    assert search_config(compose_config(["+recipe=yolo_w4a4_search"]).search, "min").mode == "min"


@pytest.mark.parametrize("values, message", [
    ({"formats": ["tflite"]}, r"export.formats has \['tflite'\]: choose among onnx, integer"),
    ({"formats": ["onnx"], "runtimes": ["tensorrt"]}, r"export.runtimes=\['tensorrt'\] must list one or more of"),
    ({"formats": ["integer"], "speed_batch": 0}, r"export.speed_batch=0 must be a positive integer"),
    ({"formats": ["onnx"], "opsett": 13}, r"export.opsett is not a setting .*; did you mean export.opset\?"),
])
def test_export_config_names_the_bad_value(values, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig.from_dict(values)

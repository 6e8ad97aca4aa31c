"""The main job end to end on a tiny configuration, and each kind of bad input through it."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from lightning_ptq.job import run_job
from lightning_ptq.calib import EmptyCalibrationError
from lightning_ptq.detection import DatasetRootNotFoundError, EmptySplitError, MalformedAnnotationError, UnreadableImageError
from lightning_ptq.hydra_setup import compose_config
from lightning_ptq.detection import CheckpointMismatchError, CorruptCheckpointError
from lightning_ptq.core.cached_training import shipped_dir
from lightning_ptq.quant import LayerPatternError, quantized_layers


# Tiny everything: 16 train images, a 1/8-width model trained one epoch, 3 calibration steps.
TINY = [
    "logger=none", "trainer.enable_progress_bar=false",
    "data.generator_kwargs={splits: {train: 16, calib: 8, val: 8, test: 8}}",
    "+model.kwargs.width_mult=0.125", "model.train.epochs=1", "model.train.batch_size=8", "model.train.val_every=1",
    "calib.num_images=8", "calib.init_batches=1", "calib.steps=3", "calib.batch_size=4", "eval.num_vis_images=2",
]


def tiny_cfg(cache_dir, *overrides):
    return compose_config(["+recipe=yolo_w4a4", f"cache_dir={cache_dir}", *TINY, *overrides])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first_run(cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_job(tiny_cfg(cache_dir), run_dir), run_dir


def test_tiny_end_to_end_writes_results_and_artifacts(first_run):
    results, run_dir = first_run
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == pytest.approx(results)
    for key in ("fp.map", "fp.map50", "quant.map", "quant.map50", "retention", "calib_seconds", "w_bits", "a_bits"):
        assert key in saved
    assert (saved["w_bits"], saved["a_bits"], saved["calib_images"]) == (4, 4, 8)
    assert 0.0 <= saved["quant.map"] <= 1.0 and saved["calib_seconds"] > 0
    assert saved["size_ratio"] > 6  # 4-bit codes vs float32, scales included
    for name in ("quantized_state_dict.pt", "packed.pt", "detections.png"):
        assert (run_dir / name).stat().st_size > 0
    state = torch.load(run_dir / "quantized_state_dict.pt", weights_only=True)
    assert any(k.startswith("head.cls.0.2.") and "quant" in k for k in state)  # head convs quantized


def test_second_run_reuses_the_cached_detector(first_run, cache_dir, tmp_path):
    results, _ = first_run
    cached = list((cache_dir / "models").glob("yolo-*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = run_job(tiny_cfg(cache_dir, "quant.w_bits=8", "quant.a_bits=8"), tmp_path)
    assert cached[0].stat().st_mtime_ns == mtime
    assert again["fp.map"] == pytest.approx(results["fp.map"])  # same FP model, same test split


@pytest.mark.slow  # exports and runs onnxruntime and OpenVINO at three settings (half a minute and more)
def test_reexport_of_a_finished_run_measures_the_runtimes(first_run, cache_dir, tmp_path):
    """calib.quantized_state loads the saved calibrated model (no calibration) and export=all
    writes model.onnx and the runtimes' and the integer executor's numbers next to the simulation's."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    results, run_dir = first_run
    again = run_job(tiny_cfg(cache_dir, f"calib.quantized_state={run_dir / 'quantized_state_dict.pt'}", "export=all",
                         "export.speed_seconds=0.1", "export.speed_batch=4"), tmp_path)
    assert again["quant.map"] == pytest.approx(results["quant.map"])  # the same calibrated model
    for prefix in ("onnx", "openvino"):
        for key in ("map", "map50", "max_abs_diff", "mean_abs_diff", "images_per_s", "fp32_images_per_s", "speedup"):
            assert f"{prefix}.{key}" in again, (prefix, key)
        assert abs(again[f"{prefix}.map"] - again["quant.map"]) <= 0.02
    assert again["integer.min_layer_within_one_step"] >= 0.999
    assert abs(again["integer.map"] - again["quant.map"]) <= 0.02
    assert again["integer.integer_layers"] + again["integer.float_layers"] == len(report_layers(tmp_path))
    for name in ("model.onnx", "model_fp32.onnx", "model_qcdq.onnx", "export_report.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["onnx.map"] == pytest.approx(again["onnx.map"])
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert {"stem.0.conv", "head.cls.0.2", "head.box.2.2"} <= {layer["name"] for layer in report["onnx"]["layers"]}


def report_layers(run_dir):
    return json.loads((run_dir / "export_report.json").read_text())["integer"]["layers"]


def test_bad_export_settings(cache_dir, tmp_path):
    from lightning_ptq.quant import ConfigError

    with pytest.raises(ConfigError, match=r"export.formats has \['tflite'\]: choose among onnx, integer"):
        run_job(tiny_cfg(cache_dir, "export=onnx", "export.formats=[tflite]"), tmp_path)
    with pytest.raises(ConfigError, match=r"calib.quantized_state='.*nowhere.pt' does not exist"):
        run_job(tiny_cfg(cache_dir, f"calib.quantized_state={tmp_path}/nowhere.pt"), tmp_path)


def test_every_conv_including_the_head_is_quantized(cache_dir):
    from lightning_ptq.detection import load_data_and_model
    from lightning_ptq.quant import QuantConfig, quantize

    cfg = tiny_cfg(cache_dir)
    _, fp_model = load_data_and_model(cfg)
    qmodel = quantize(fp_model, QuantConfig.from_dict(OmegaConf.to_container(cfg.quant)))
    convs = [n for n, m in fp_model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(quantized_layers(qmodel)) == sorted(convs)
    assert "stem.0.conv" in convs and "head.box.2.2" in convs and "head.cls.0.2" in convs


def test_fcos_end_to_end_with_the_filtered_global_loss(cache_dir, tmp_path):
    """model=fcos_r18 through the same job: pretrained with torchvision's loss and cached under its
    own name, every conv quantized (head included), calibrated with FGL through the FCOS adapter."""
    tiny = [o for o in TINY if not o.startswith("+model.kwargs.")]
    cfg = compose_config([
        "+recipe=fcos_w4a4", f"cache_dir={cache_dir}", *tiny, "data.image_size=64",
        "+model.kwargs.fpn_channels=32", "+model.kwargs.num_convs=1", "calib.steps=2", "calib.loss=fgl",
        "quant.w_init=minmax",  # the MSE range search over ResNet-18's 11.7 M weights alone takes ~30 s
    ])
    results = run_job(cfg, tmp_path)
    assert (results["w_bits"], results["a_bits"]) == (4, 4) and 0.0 <= results["quant.map"] <= 1.0
    assert results["size_ratio"] > 6
    assert len(list((cache_dir / "models").glob("fcos-*.pt"))) == 1
    state = torch.load(tmp_path / "quantized_state_dict.pt", weights_only=True)
    for layer in ("backbone.body.conv1", "head.classification_head.cls_logits", "head.regression_head.bbox_reg"):
        assert any(k.startswith(f"{layer}.") and "quant" in k for k in state), layer


def test_wandb_offline_run_files(cache_dir, tmp_path):
    cfg = tiny_cfg(cache_dir, "logger=wandb", f"logger.save_dir={tmp_path}", "calib.steps=1")
    run_job(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_the_shipped_detector_keeps_its_accuracy_through_a_tiny_calibration(tmp_path):
    """The tiny test split is the first 8 images of the default one, so the shipped FP detector
    is accurate on it; quantizing must keep most of that (a collapse to 0 fails here)."""
    shipped = next(shipped_dir().glob("yolo-*.pt"))
    data = [o for o in TINY if not o.startswith("model.")]
    results = {}
    for recipe, steps in (("yolo_w4a4", 20), ("yolo_w8a8", 3)):
        cfg = compose_config([f"+recipe={recipe}", f"cache_dir={tmp_path / 'cache'}", *data,
                              f"model.checkpoint={shipped}", f"calib.steps={steps}"])
        results[recipe] = run_job(cfg, tmp_path / recipe)
    assert results["yolo_w4a4"]["fp.map"] > 0.5  # measured: 0.665
    assert results["yolo_w4a4"]["retention"] > 0.6  # measured: 0.708
    assert results["yolo_w8a8"]["retention"] > 0.75  # measured: 0.835 (ranges from 4 images, 3 steps)
    assert results["yolo_w8a8"]["quant.map"] > results["yolo_w4a4"]["quant.map"]


# --- bad input, one by one -------------------------------------------------------------------


def test_a_mistyped_dataset_folder_is_an_error_and_is_never_created(cache_dir, tmp_path):
    # generate_default is left as it is: the default data is written only at its own place
    cfg = tiny_cfg(cache_dir, f"data.root={tmp_path}/nowhere/coco")
    with pytest.raises(DatasetRootNotFoundError, match=r"nowhere/coco does not exist\. Set data\.root to your COCO"):
        run_job(cfg, tmp_path)
    assert not (tmp_path / "nowhere").exists()


def test_truncated_image_names_the_file_and_image_id(cache_dir, user_copy, tmp_path):
    data = json.loads((user_copy / "annotations" / "instances_calib.json").read_text())
    image = data["images"][0]
    path = user_copy / "images" / image["file_name"]
    path.write_bytes(path.read_bytes()[:200])  # a PNG cut short
    cfg = tiny_cfg(cache_dir, f"data.root={user_copy}")
    with pytest.raises(UnreadableImageError, match=rf"{re.escape(image['file_name'])} \(image id {image['id']} of "
                                                   rf"split 'calib'.*is not a readable image"):
        run_job(cfg, tmp_path)


def test_negative_box_width_names_the_annotation(cache_dir, user_copy, tmp_path):
    path = user_copy / "annotations" / "instances_test.json"
    data = json.loads(path.read_text())
    data["annotations"][3]["bbox"][2] = -4.0
    path.write_text(json.dumps(data))
    cfg = tiny_cfg(cache_dir, f"data.root={user_copy}")
    with pytest.raises(MalformedAnnotationError, match=rf"annotation id {data['annotations'][3]['id']} has bbox .* "
                                                       r"negative width or height"):
        run_job(cfg, tmp_path)


@pytest.fixture
def user_copy(cache_dir, first_run, tmp_path):
    """A copy of the tiny generated dataset that a test may break."""
    root = tmp_path / "coco"
    shutil.copytree(cache_dir / "data" / "shapes", root)
    return root


def test_malformed_coco_json(cache_dir, user_copy, tmp_path):
    (user_copy / "annotations" / "instances_val.json").write_text('{"images": [}')
    cfg = tiny_cfg(cache_dir, f"data.root={user_copy}")
    with pytest.raises(MalformedAnnotationError, match=r"instances_val\.json"):
        run_job(cfg, tmp_path)


def test_empty_calibration_split(cache_dir, user_copy, tmp_path):
    path = user_copy / "annotations" / "instances_calib.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "images": [], "annotations": []}))
    cfg = tiny_cfg(cache_dir, f"data.root={user_copy}")
    with pytest.raises(EmptySplitError, match=r"split 'calib'.*lists no images"):
        run_job(cfg, tmp_path)


def test_empty_calibration_batches_from_the_api():
    from lightning_ptq import CalibConfig, QuantConfig, calibrate, quantize

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(EmptyCalibrationError, match="the calibration set is empty"):
        calibrate(model, quantize(model, QuantConfig()), [], CalibConfig(steps=1))


def test_corrupt_checkpoint(cache_dir, tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"\x80\x02garbage")
    cfg = tiny_cfg(cache_dir, f"model.checkpoint={tmp_path}/ckpt.pt")
    with pytest.raises(CorruptCheckpointError, match=r"ckpt\.pt cannot be read as a PyTorch file"):
        run_job(cfg, tmp_path)


def test_checkpoint_of_another_model(cache_dir, first_run, tmp_path):
    cached = next((cache_dir / "models").glob("yolo-*.pt"))
    state = torch.load(cached, weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "theirs.pt")  # a bare state_dict of the 1/8-width model
    cfg = tiny_cfg(cache_dir, f"model.checkpoint={tmp_path}/theirs.pt", "model.kwargs.width_mult=0.25")
    with pytest.raises(CheckpointMismatchError, match=r"does not fit the configured detector.*shape mismatch"):
        run_job(cfg, tmp_path)


def test_layer_pattern_matching_nothing(cache_dir, first_run, tmp_path):
    cfg = tiny_cfg(cache_dir, "quant.exclude=[neck.*]")
    with pytest.raises(LayerPatternError, match=r"neck\.\*"):
        run_job(cfg, tmp_path)


def test_cli_prints_one_paragraph_without_traceback(cache_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ptq", "+recipe=yolo_w4a4", f"cache_dir={cache_dir}", *TINY,
         f"data.root={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2
    assert "lightning_ptq: DatasetRootNotFoundError:" in proc.stderr and "data.root=" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # two jobs through Hydra's launcher; tests/app/test_collect.py runs a tiny sweep in the default run
def test_multirun_sweep_writes_one_result_per_job(cache_dir, first_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ptq", "-m", "+recipe=yolo_w4a4", "quant.w_bits=4,8", f"cache_dir={cache_dir}",
         *TINY, "calib.steps=1", f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["w_bits"] for r in results] == [4, 8] and all(r["a_bits"] == 4 for r in results)

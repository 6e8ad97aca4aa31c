"""The steps the job (:mod:`lightning_ptq.job`) runs for every task: checking the calibration
settings, choosing the distillation loss, taking the calibration batches, quantizing and
calibrating, saving, exporting, and logging the result to W&B."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from .calib import FeatureMatching, FilteredGlobalLoss, KeypointDistillLoss, OutputMSE, calibrate
from .calib.api import CalibrationReport
from .calib.config import CalibJobConfig
from .core.checkpoint import load_strict, read_checkpoint
from .core.errors import ConfigError
from .core.io import atomic_torch_save, atomic_write_json
from .export import ExportConfig, export_packed, float_size_bytes, packed_size_bytes
from .export.deploy import deploy
from .quant import QuantConfig, quantize
from .report import deploy_table
from .search.params import apply_layer_params


def check_calib_config(calib: DictConfig | dict) -> CalibJobConfig:
    """The ``calib`` group as the :class:`CalibJobConfig` the job calibrates with, validated once,
    here: a bad value or an unknown key stops with the fix."""
    values = OmegaConf.to_container(calib, resolve=True) if isinstance(calib, DictConfig) else dict(calib)
    return CalibJobConfig.from_dict(values)


def check_loss_family(loss: str, task: str) -> None:
    """FGL needs a detector's boxes and scores, the keypoint loss a keypoint model's outputs;
    ``task`` is ``detector``, ``keypoint`` or ``classifier``."""
    usable = {"detector": "fgl or output_mse", "keypoint": "keypoint_distill or output_mse",
              "classifier": "output_mse"}[task]
    if loss == "fgl" and task != "detector":
        raise ConfigError(f"calib.loss=fgl needs a detector; for a {task} model use {usable}.")
    if loss == "keypoint_distill" and task != "keypoint":
        raise ConfigError(f"calib.loss=keypoint_distill needs a keypoint model (model.name=keypoint); "
                          f"for a {task} use {usable}.")


def calibration_loss(calib: CalibJobConfig, fp_model):
    """The distillation loss named by ``calib.loss``: FGL reads a detector's outputs through its
    own adapter; the keypoint loss compares coordinates and per-axis distributions. With
    ``calib.features.weight > 0`` feature matching at ``calib.features.modules`` (empty: the
    model's own ``feature_modules``) is added."""
    family = getattr(fp_model, "family", None)
    check_loss_family(calib.loss, family if family in ("keypoint", "classifier") else "detector")
    if calib.loss == "fgl":
        if not callable(getattr(fp_model, "adapter", None)):
            raise ConfigError(
                f"calib.loss=fgl reads the detector's class logits and boxes through its adapter(), and "
                f"{type(fp_model).__name__} has none: implement the Detector protocol (adapter() -> a callable "
                f"outputs -> (class logits [B, A, C], boxes [B, A, 4] xyxy); README, 'Your own detector'), or use "
                f"calib.loss=output_mse.")
        loss = FilteredGlobalLoss(fp_model.adapter(), calib.fgl)
    elif calib.loss == "keypoint_distill":
        loss = KeypointDistillLoss(fp_model.stride)
    else:
        loss = OutputMSE()
    if calib.features.weight > 0:
        modules = calib.features.modules or list(getattr(fp_model, "feature_modules", ()))
        loss = FeatureMatching(loss, modules, calib.features.weight, calib.features.fisher)
    return loss


def calibration_batches(datamodule, num_images: int, seed: int | None = None) -> list:
    """The first ``num_images`` images of the calib split, as a fixed list of batches (targets are
    a list of per-image dicts for detection, a dict of stacked tensors for keypoints). With
    ``seed`` (``calib.image_seed``): ``num_images`` images drawn from the whole split in an order
    that the seed sets, in batches of the data module's size, so that seeds measure the spread
    over calibration sets too."""
    if seed is not None:
        return _drawn_batches(datamodule, num_images, seed)
    batches, seen = [], 0
    for images, targets in datamodule.calib_dataloader():
        take = min(len(images), num_images - seen)
        kept = {k: v[:take] for k, v in targets.items()} if isinstance(targets, dict) else targets[:take]
        batches.append((images[:take], kept))
        seen += take
        if seen >= num_images:
            break
    return batches


def _drawn_batches(datamodule, num_images: int, seed: int) -> list:
    images, targets = [], []
    for x, t in datamodule.calib_dataloader():
        images.append(x)
        targets.append(t)
    images = torch.cat(images)
    if isinstance(targets[0], dict):
        stacked = {k: torch.cat([t[k] for t in targets]) for k in targets[0]}
        pick = lambda idx: {k: v[idx] for k, v in stacked.items()}  # noqa: E731
    else:
        flat = [t for batch in targets for t in batch]
        pick = lambda idx: [flat[i] for i in idx.tolist()]  # noqa: E731
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_images]
    size = datamodule.batch_size
    return [(images[order[i:i + size]], pick(order[i:i + size])) for i in range(0, len(order), size)]


def quantize_and_calibrate(fp_model, qcfg: QuantConfig, batches: list, calib: CalibJobConfig | DictConfig,
                           trainer: DictConfig, logger=None, checkpoint_dir: Path | None = None):
    """Quantize ``fp_model`` with ``qcfg`` and calibrate it on ``batches``; returns (model, seconds,
    :class:`~lightning_ptq.calib.api.CalibrationReport`). ``calib``: the job's
    :class:`CalibJobConfig` (a ``calib`` node is checked into one). With ``calib.layer_params`` (a
    search's ``layer_params.json``) the file gives every layer's bits and ranges instead; with
    ``calib.quantized_state`` (a run's ``quantized_state_dict.pt``) the saved calibrated model is
    loaded, e.g. to export a finished run without recalibrating."""
    if not isinstance(calib, CalibJobConfig):
        calib = check_calib_config(calib)
    qmodel = quantize(fp_model, qcfg, example_input=batches[0][0] if batches else None)
    start = time.perf_counter()
    if calib.quantized_state:
        load_quantized_state(qmodel, calib.quantized_state)
        return qmodel, time.perf_counter() - start, CalibrationReport()
    if calib.layer_params:
        apply_layer_params(qmodel, calib.layer_params, strict=True)
        return qmodel, time.perf_counter() - start, CalibrationReport()
    report = calibrate(
        fp_model, qmodel, batches, calib, loss=calibration_loss(calib, fp_model),
        checkpoint_dir=checkpoint_dir,
        trainer_kwargs={**OmegaConf.to_container(trainer, resolve=True), "logger": logger or False},
    )
    return qmodel, time.perf_counter() - start, report


def load_quantized_state(qmodel, path: str | Path) -> None:
    """Load a saved calibrated state (``quantized_state_dict.pt``) into ``qmodel``, quantized with
    the same settings: a missing file is a ConfigError, an unreadable one or one of other settings
    the checkpoint errors, each naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calib.quantized_state={str(path)!r} does not exist: give a run's quantized_state_dict.pt.")
    load_strict(qmodel, read_checkpoint(path), path, "this quantized model",
                "Use the model and quant settings of the run that wrote it (its .hydra/config.yaml).")


def run_results(fp_model, qmodel, qcfg: QuantConfig, fp: dict, quant: dict, batches: list,
                calib_seconds: float) -> dict:
    """What every job reports: the FP and quantized metrics (``fp.*``, ``quant.*``), model sizes,
    bit widths, calibration time and images."""
    fp_bytes, q_bytes = float_size_bytes(fp_model), packed_size_bytes(qmodel)
    return {
        **{f"fp.{k}": float(v) for k, v in fp.items()}, **{f"quant.{k}": float(v) for k, v in quant.items()},
        "fp.size_kib": fp_bytes / 1024, "quant.size_kib": q_bytes / 1024, "size_ratio": fp_bytes / q_bytes,
        "calib_seconds": calib_seconds, "w_bits": qcfg.w_bits, "a_bits": qcfg.a_bits,
        "calib_images": sum(len(b[0]) for b in batches),
    }


def save_run(run_dir: Path, qmodel, results: dict) -> None:
    """The quantized state_dict, the bit-packed export and ``results.json``, each atomically."""
    atomic_torch_save(qmodel.state_dict(), run_dir / "quantized_state_dict.pt")
    atomic_torch_save(export_packed(qmodel), run_dir / "packed.pt")
    atomic_write_json(results, run_dir / "results.json")


def export_config(export: DictConfig | None) -> ExportConfig | None:
    """The ``export`` group as the :class:`ExportConfig` the job exports with (``None`` when the
    config has none), validated once, here, with the runtimes it names installed."""
    if export is None:
        return None
    config = ExportConfig.from_dict(OmegaConf.to_container(export, resolve=True))
    config.require_installed()
    return config


def deploy_and_save(export: ExportConfig | None, fp_model, qmodel, batches: list, run_dir: Path, results: dict,
                    evaluate) -> dict:
    """The ``export`` step (:func:`lightning_ptq.export.deploy.deploy`) on the calibration
    images; its numbers are added to ``results.json`` (rewritten atomically) and returned."""
    deployed = deploy(export, fp_model, qmodel, [b[0] for b in batches], run_dir, evaluate)
    if deployed:
        atomic_write_json(results | deployed, run_dir / "results.json")
    return deployed


def print_deploy_table(results: dict, metric: str, label: str) -> None:
    table = deploy_table(results, metric, label)
    if table is not None:
        Console().print(table)


def log_to_wandb(logger, results: dict, table: tuple[list[str], list[list]], image: Path | None, image_key: str,
                 cfg: DictConfig) -> None:
    """The run's config, its numbers, the FP-vs-quantized table and the picture (if any), then finish."""
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({k: v for k, v in results.items() if isinstance(v, (int, float))})
    columns, rows = table
    logger.log_table(key="fp_vs_quant", columns=columns, data=rows)
    if image is not None:
        logger.log_image(key=image_key, images=[str(image)])
    logger.experiment.finish()

"""The main job: FP detector -> quantize -> calibrate -> evaluate FP vs quantized -> report.

``run(cfg)`` does the work and returns the results dict; ``__main__`` is the thin Hydra wrapper.
"""
from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from .calib import (
    EmptyCalibrationError, FilteredGlobalLoss, NonFiniteCalibrationError, NonFiniteLossError, OutputMSE, calibrate,
)
from .data import (
    AnnotationFileNotFoundError, DatasetRootNotFoundError, EmptySplitError, ImageFileNotFoundError,
    MalformedAnnotationError, NotAGeneratedDatasetError,
)
from .export import export_packed, float_size_bytes, packed_size_bytes
from .io import atomic_torch_save, atomic_write_json
from .models import (
    CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError, detect, evaluate_detections,
    pretrained_detector,
)
from .quant import ConfigError, LayerPatternError, QuantConfig, quantize
from .report import plot_detections, results_table, table_rows

log = logging.getLogger(__name__)

LOSSES = ("output_mse", "fgl")

# Problems with what the user gave (settings, data, checkpoint): the entry point prints their
# message, which names the problem and the fix, without a traceback.
USER_ERRORS = (
    ConfigError, LayerPatternError, DatasetRootNotFoundError, AnnotationFileNotFoundError, ImageFileNotFoundError,
    MalformedAnnotationError, EmptySplitError, NotAGeneratedDatasetError, CheckpointNotFoundError,
    CorruptCheckpointError, CheckpointMismatchError, EmptyCalibrationError, NonFiniteCalibrationError, NonFiniteLossError,
)


def check_calib_config(calib: DictConfig) -> None:
    """Fail at start-up, with the fix, on calibration settings that cannot work."""
    if calib.loss not in LOSSES:
        raise ConfigError(f"calib.loss={calib.loss!r} is unknown: choose one of {', '.join(LOSSES)}.")
    try:
        FilteredGlobalLoss(None, **calib.fgl)
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"calib.fgl: {err}") from err
    for key in ("num_images", "init_batches", "batch_size"):
        if not isinstance(calib[key], int) or calib[key] < 1:
            raise ConfigError(f"calib.{key}={calib[key]!r} must be a positive integer.")
    if not isinstance(calib.steps, int) or calib.steps < 0:
        raise ConfigError(f"calib.steps={calib.steps!r} must be an integer >= 0 (0: ranges only).")
    if calib.lr <= 0:
        raise ConfigError(f"calib.lr={calib.lr!r} must be > 0.")
    if not 0.0 <= calib.drop_prob < 1.0:
        raise ConfigError(f"calib.drop_prob={calib.drop_prob!r} must lie in [0, 1).")
    recon = calib.recon
    if not isinstance(recon.steps, int) or recon.steps < 0:
        raise ConfigError(f"calib.recon.steps={recon.steps!r} must be an integer >= 0 (0: no block reconstruction).")
    if not 0.0 <= recon.drop_prob < 1.0:
        raise ConfigError(f"calib.recon.drop_prob={recon.drop_prob!r} must lie in [0, 1).")
    if recon.lr <= 0:
        raise ConfigError(f"calib.recon.lr={recon.lr!r} must be > 0.")
    if not isinstance(recon.max_layers, int) or recon.max_layers < 1:
        raise ConfigError(f"calib.recon.max_layers={recon.max_layers!r} must be a positive integer.")


def calibration_loss(calib: DictConfig, fp_model):
    """The distillation loss named by ``calib.loss``; FGL reads the outputs through the detector's
    own adapter (every family has one)."""
    if calib.loss == "fgl":
        return FilteredGlobalLoss(fp_model.adapter(), **calib.fgl)
    return OutputMSE()


def calibration_batches(datamodule, num_images: int) -> list:
    """The first ``num_images`` images of the calib split, as a fixed list of batches."""
    batches, seen = [], 0
    for images, targets in datamodule.calib_dataloader():
        take = min(len(images), num_images - seen)
        batches.append((images[:take], targets[:take]))
        seen += take
        if seen >= num_images:
            break
    return batches


def load_data_and_model(cfg: DictConfig):
    """The data module (default data generated on first use) and the FP detector (pretrained and
    cached on first use, or the user's checkpoint), in eval mode."""
    datamodule = instantiate(cfg.data, batch_size=cfg.calib.batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    fp_model = pretrained_detector(
        datamodule, cfg.model, cache_dir=Path(cfg.cache_dir) / "models",
        trainer_kwargs=OmegaConf.to_container(cfg.trainer, resolve=True),
    )
    return datamodule, fp_model.eval()


def quantize_and_calibrate(fp_model, qcfg: QuantConfig, batches: list, calib: DictConfig, trainer: DictConfig,
                           logger=None, checkpoint_dir: Path | None = None):
    """Quantize ``fp_model`` with ``qcfg`` and calibrate it on ``batches``; returns (model, seconds)."""
    qmodel = quantize(fp_model, qcfg, example_input=batches[0][0] if batches else None)
    start = time.perf_counter()
    calibrate(
        fp_model, qmodel, batches, steps=calib.steps, lr=calib.lr, loss=calibration_loss(calib, fp_model),
        num_init_batches=calib.init_batches, checkpoint_dir=checkpoint_dir,
        recon=OmegaConf.to_container(calib.recon, resolve=True), drop_prob=calib.drop_prob,
        trainer_kwargs=dict(logger=logger or False, enable_progress_bar=trainer.enable_progress_bar,
                            accelerator=trainer.accelerator, devices=trainer.devices),
    )
    return qmodel, time.perf_counter() - start


def eval_kwargs(cfg: DictConfig) -> dict:
    return dict(conf_thr=cfg.eval.conf_thr, iou_thr=cfg.eval.iou_thr, max_det=cfg.eval.max_det)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the main job described by ``cfg``; write results to ``run_dir``; return the results."""
    run_dir = Path(run_dir)
    qcfg = QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))  # validate first
    check_calib_config(cfg.calib)
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    logger = instantiate(cfg.logger) if cfg.logger else None

    datamodule, fp_model = load_data_and_model(cfg)
    fp = evaluate_detections(fp_model, datamodule.test_dataloader(), **eval_kwargs(cfg))
    batches = calibration_batches(datamodule, cfg.calib.num_images)
    qmodel, calib_seconds = quantize_and_calibrate(
        fp_model, qcfg, batches, cfg.calib, cfg.trainer, logger,
        checkpoint_dir=run_dir / "calib_ckpt" if cfg.calib.resume else None,
    )
    quant = evaluate_detections(qmodel, datamodule.test_dataloader(), **eval_kwargs(cfg))

    fp_bytes, q_bytes = float_size_bytes(fp_model), packed_size_bytes(qmodel)
    results = {
        **{f"fp.{k}": float(v) for k, v in fp.items()},
        **{f"quant.{k}": float(v) for k, v in quant.items()},
        "fp.size_kib": fp_bytes / 1024, "quant.size_kib": q_bytes / 1024, "size_ratio": fp_bytes / q_bytes,
        "retention": float(quant["map"] / fp["map"]) if fp["map"] > 0 else 0.0,
        "calib_seconds": calib_seconds, "w_bits": qcfg.w_bits, "a_bits": qcfg.a_bits,
        "calib_images": sum(len(b[0]) for b in batches),
    }
    atomic_torch_save(qmodel.state_dict(), run_dir / "quantized_state_dict.pt")
    atomic_torch_save(export_packed(qmodel), run_dir / "packed.pt")
    atomic_write_json(results, run_dir / "results.json")
    Console().print(results_table(results))

    vis = _detections_figure(fp_model, qmodel, datamodule, cfg, run_dir, f"W{qcfg.w_bits}A{qcfg.a_bits}")
    if logger is not None:
        _log_to_wandb(logger, results, vis, cfg)
    return results


def _detections_figure(fp_model, qmodel, datamodule, cfg, run_dir: Path, title: str) -> Path:
    n = cfg.eval.num_vis_images
    images = torch.cat([b[0] for b in itertools.islice(datamodule.test_dataloader(), n)])[:n]
    kwargs = {**eval_kwargs(cfg), "conf_thr": cfg.eval.vis_score_thr}
    return plot_detections(
        images, detect(fp_model, images, **kwargs), detect(qmodel, images, **kwargs),
        datamodule.class_names, run_dir / "detections.png", score_thr=cfg.eval.vis_score_thr, title=title,
    )


def _log_to_wandb(logger, results: dict, vis: Path, cfg: DictConfig) -> None:
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    logger.log_metrics({k: v for k, v in results.items() if isinstance(v, (int, float))})
    columns, rows = table_rows(results)
    logger.log_table(key="fp_vs_quant", columns=columns, data=rows)
    logger.log_image(key="detections", images=[str(vis)])
    logger.experiment.finish()

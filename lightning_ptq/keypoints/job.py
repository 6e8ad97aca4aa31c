"""The keypoint job (``model.name=keypoint``, recipes ``keypoint_*``): FP keypoint model ->
quantize -> calibrate -> evaluate FP vs quantized (NME, PCK, OKS AP) -> report.

It shares the quantization core, the calibration entry point and the run folder layout with the
detector job (:mod:`lightning_ptq.app`); only the data, the model and the metrics differ.
"""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from ..pipeline import (
    calibration_batches, deploy_and_save, log_to_wandb, print_deploy_table, quantize_and_calibrate, run_results, save_run,
)
from ..quant import QuantConfig
from ..quant.config import ConfigError
from .model import check_keypoint_settings
from .report import keypoint_results_table, keypoint_table_rows, plot_keypoints
from .train import evaluate_keypoints, pretrained_keypoint_model

KEYPOINT_KEYS = ("grid", "logits", "beta", "learn_beta", "compensate")


def keypoint_model_kwargs(cfg: DictConfig) -> dict:
    """Architecture (``model.kwargs``) and method settings (the ``keypoint`` group) of the model,
    validated: beta > 0, a grid the three blocks can make, a known logit kind."""
    if cfg.get("keypoint") is None:
        raise ConfigError("model.name=keypoint needs the keypoint group: add keypoint=cosine_comp (or cosine, "
                          "plain), or use a keypoint_* recipe.")
    method = OmegaConf.to_container(cfg.keypoint, resolve=True)
    unknown = sorted(set(method) - set(KEYPOINT_KEYS))
    if unknown:
        raise ConfigError(f"keypoint has unknown keys {unknown}: allowed are {list(KEYPOINT_KEYS)}.")
    check_keypoint_settings(cfg.data.image_size, method["grid"], method["logits"], method["beta"])
    return {**OmegaConf.to_container(cfg.model.kwargs, resolve=True), **method}


def load_keypoint_data_and_model(cfg: DictConfig, kwargs: dict):
    """The keypoint data module (default data generated on first use) and the FP model with
    ``kwargs`` (trained and cached on first use, or the user's checkpoint), in eval mode."""
    datamodule = instantiate(cfg.data, batch_size=cfg.calib.batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = pretrained_keypoint_model(
        datamodule, kwargs, OmegaConf.to_container(cfg.model.train, resolve=True), cfg.model.checkpoint,
        cache_dir=Path(cfg.cache_dir) / "models", trainer_kwargs=OmegaConf.to_container(cfg.trainer, resolve=True))
    datamodule.batch_size = cfg.calib.batch_size
    return datamodule, model.eval()


def run_keypoints(cfg: DictConfig, run_dir: Path, qcfg: QuantConfig, kwargs: dict, logger=None) -> dict:
    """The keypoint job with the model settings ``kwargs`` (:func:`keypoint_model_kwargs`); writes
    ``results.json``, the quantized and packed weights and ``keypoints.png`` to ``run_dir``;
    returns the results."""
    datamodule, fp_model = load_keypoint_data_and_model(cfg, kwargs)
    evaluate = dict(progress=cfg.trainer.enable_progress_bar, sigmas=cfg.eval.oks_sigmas)
    fp = evaluate_keypoints(fp_model, datamodule.test_dataloader(), **evaluate)
    batches = calibration_batches(datamodule, cfg.calib.num_images)
    qmodel, calib_seconds = quantize_and_calibrate(
        fp_model, qcfg, batches, cfg.calib, cfg.trainer, logger,
        checkpoint_dir=run_dir / "calib_ckpt" if cfg.calib.resume else None)
    quant = evaluate_keypoints(qmodel, datamodule.test_dataloader(), **evaluate)

    results = {
        **run_results(fp_model, qmodel, qcfg, fp, quant, batches, calib_seconds),
        "nme_ratio": quant["nme"] / fp["nme"],
        **{f"clipped_keypoints.{split}": datamodule.dataset(split).clipped for split in datamodule.splits},
        **{f"keypoint.{k}": v for k, v in OmegaConf.to_container(cfg.keypoint, resolve=True).items()},
    }
    save_run(run_dir, qmodel, results)
    results |= deploy_and_save(cfg, fp_model, qmodel, batches, run_dir, results,
                               lambda m: evaluate_keypoints(m, datamodule.test_dataloader(), **evaluate))
    Console().print(keypoint_results_table(results))
    print_deploy_table(results, "nme", "NME")

    vis = _keypoints_figure(fp_model, qmodel, datamodule, cfg.eval.num_vis_images, run_dir,
                            f"W{qcfg.w_bits}A{qcfg.a_bits}")
    if logger is not None:
        log_to_wandb(logger, results, keypoint_table_rows(results), vis, "keypoints", cfg)
    return results


@torch.no_grad()
def _keypoints_figure(fp_model, qmodel, datamodule, n: int, run_dir: Path, title: str) -> Path:
    images, target = next(iter(datamodule.test_dataloader()))
    images, truth = images[:n], target["keypoints"][:n]
    return plot_keypoints(images, truth, fp_model(images)["coords"], qmodel(images)["coords"],
                          run_dir / "keypoints.png", title=title)

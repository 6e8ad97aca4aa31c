"""The main job: FP model -> quantize -> calibrate -> evaluate FP vs quantized -> report.

``run(cfg)`` does the work and returns the results dict; ``__main__`` is the thin Hydra wrapper.
Detectors (``model.name`` yolo or fcos) are handled here, keypoint models (``model.name=keypoint``)
by :mod:`lightning_ptq.keypoints.job`, classifiers (``model.name=classifier``) by
:mod:`lightning_ptq.classify.job`; the steps they share are in :mod:`lightning_ptq.pipeline`.
With a ``search`` node, the calibrated model then goes through the per-layer search
(:mod:`lightning_ptq.search.job`).
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch.utils.data import ConcatDataset

from .keypoints import KeypointNet, run_keypoints
from .keypoints.job import keypoint_model_kwargs
from .models import detect, evaluate_detections, pretrained_detector
from .classify import TinyResNet
from .classify.job import run_classification
from .data import detection_collate
from .export.deploy import check_export_config
from .pipeline import (
    calibration_batches, check_calib_config, check_loss_family, deploy_and_save, log_to_wandb, print_deploy_table,
    quantize_and_calibrate, run_results, save_run,
)
from .quant import ConfigError, QuantConfig
from .report import plot_detections, results_table, table_rows
from .search.job import check_selection, run_search, search_config, search_results, select_sets, subset_batches
from .search.report import search_summary_table

log = logging.getLogger(__name__)


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


def eval_kwargs(cfg: DictConfig) -> dict:
    return dict(conf_thr=cfg.eval.conf_thr, iou_thr=cfg.eval.iou_thr, max_det=cfg.eval.max_det)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the main job described by ``cfg``; write results to ``run_dir``; return the results."""
    run_dir = Path(run_dir)
    qcfg = QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))  # validate first
    check_calib_config(cfg.calib)
    check_export_config(cfg.get("export"))
    is_keypoint = cfg.model.name == KeypointNet.family
    task = "keypoint" if is_keypoint else "classifier" if cfg.model.name == TinyResNet.family else "detector"
    check_loss_family(cfg.calib.loss, task)
    keypoint_kwargs = keypoint_model_kwargs(cfg) if is_keypoint else None  # fails before anything is written
    if cfg.get("search"):
        if is_keypoint:
            raise ConfigError("search: the per-layer search runs on classifiers and detectors; drop search= for "
                              "a keypoint model.")
        search_config(cfg.search, "max")
        check_selection(cfg.search)
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    logger = instantiate(cfg.logger) if cfg.logger else None
    if is_keypoint:
        return run_keypoints(cfg, run_dir, qcfg, keypoint_kwargs, logger)
    if task == "classifier":
        return run_classification(cfg, run_dir, qcfg, logger)
    return run_detection(cfg, run_dir, qcfg, logger)


def run_detection(cfg: DictConfig, run_dir: Path, qcfg: QuantConfig, logger=None) -> dict:
    """The detector job; writes ``results.json``, the quantized and packed weights and
    ``detections.png`` to ``run_dir`` (with ``search``: also the search report); returns the results."""
    datamodule, fp_model = load_data_and_model(cfg)
    test = datamodule.test_dataloader()
    fp = evaluate_detections(fp_model, test, **eval_kwargs(cfg))
    if cfg.get("search"):
        batches, val_batches = _search_sets(cfg, datamodule)
    else:
        batches = calibration_batches(datamodule, cfg.calib.num_images)
    qmodel, calib_seconds = quantize_and_calibrate(
        fp_model, qcfg, batches, cfg.calib, cfg.trainer, logger,
        checkpoint_dir=run_dir / "calib_ckpt" if cfg.calib.resume else None,
    )
    quant = evaluate_detections(qmodel, test, **eval_kwargs(cfg))
    search_numbers = {}
    if cfg.get("search"):
        def val_map(model) -> float:
            return evaluate_detections(model, val_batches, progress=False, **eval_kwargs(cfg))["map"]

        search = run_search(cfg, run_dir, qmodel, batches, val_map, "mAP", logger=logger)
        searched = evaluate_detections(qmodel, test, **eval_kwargs(cfg))
        search_numbers = search_results(search, fp["map"], quant["map"], searched["map"])
        quant = searched  # the job's result is the searched model; search.test_start is the one before

    results = run_results(fp_model, qmodel, qcfg, fp, quant, batches, calib_seconds) | search_numbers
    results["retention"] = float(quant["map"] / fp["map"]) if fp["map"] > 0 else 0.0
    save_run(run_dir, qmodel, results)
    results |= deploy_and_save(cfg, fp_model, qmodel, batches, run_dir, results,
                               lambda m: evaluate_detections(m, test, **eval_kwargs(cfg)))
    Console().print(results_table(results))
    print_deploy_table(results, "map", "mAP@[.5:.95]")
    if cfg.get("search"):
        Console().print(search_summary_table(results, "mAP"))

    vis = _detections_figure(fp_model, qmodel, datamodule, cfg, run_dir, f"W{qcfg.w_bits}A{qcfg.a_bits}")
    if logger is not None:
        log_to_wandb(logger, results, table_rows(results), vis, "detections", cfg)
    return results


def _search_sets(cfg: DictConfig, datamodule) -> tuple[list, list]:
    """Calibration and validation batches chosen from the pool (the calib and val splits) by
    ``search.selection``; the test split never takes part."""
    splits = [datamodule.dataset(s) for s in ("calib", "val")]
    pool = ConcatDataset(splits)
    classes = [c for ds in splits for c in ds.image_classes()]
    calib_idx, val_idx = select_sets(classes, datamodule.num_classes, datamodule.class_names, cfg.search)
    log.info("search: %d calibration and %d validation images from a pool of %d", len(calib_idx), len(val_idx),
             len(pool))
    return (subset_batches(pool, calib_idx, cfg.calib.batch_size, detection_collate),
            subset_batches(pool, val_idx, cfg.calib.batch_size, detection_collate))


def _detections_figure(fp_model, qmodel, datamodule, cfg, run_dir: Path, title: str) -> Path:
    n = cfg.eval.num_vis_images
    images = torch.cat([b[0] for b in itertools.islice(datamodule.test_dataloader(), n)])[:n]
    kwargs = {**eval_kwargs(cfg), "conf_thr": cfg.eval.vis_score_thr}
    return plot_detections(
        images, detect(fp_model, images, **kwargs), detect(qmodel, images, **kwargs),
        datamodule.class_names, run_dir / "detections.png", score_thr=cfg.eval.vis_score_thr, title=title,
    )

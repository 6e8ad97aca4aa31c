"""The detector task of the shared job: COCO-format data, a detector of this package's families
(pretrained and cached on first use, or the user's checkpoint), COCO mAP on the test split, and
FP vs quantized detections drawn on test images."""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset

from ..core.task import TaskBase, prepared_datamodule, training_settings
from ..pipeline import calibration_batches
from ..report import plot_detections, results_table, table_rows
from ..search.job import select_sets, subset_batches
from .coco import detection_collate
from .detector import detect, evaluate_detections
from .pretrain import pretrained_detector

log = logging.getLogger(__name__)


def eval_kwargs(cfg: DictConfig) -> dict:
    return dict(conf_thr=cfg.eval.conf_thr, iou_thr=cfg.eval.iou_thr, max_det=cfg.eval.max_det)


def load_data_and_model(cfg: DictConfig):
    """The data module (default data generated on first use) and the FP detector (shipped,
    pretrained and cached on first use, or the user's checkpoint), in eval mode."""
    datamodule = prepared_datamodule(cfg)
    fp_model = pretrained_detector(
        datamodule, OmegaConf.to_container(cfg.model, resolve=True), cache_dir=Path(cfg.cache_dir) / "models",
        trainer_kwargs=training_settings(cfg),
    )
    return datamodule, fp_model.eval()


class DetectionTask(TaskBase):
    """Detectors: ``model.name`` yolo or fcos, ``data`` a COCO folder (see :class:`~lightning_ptq.core.task.Task`)."""

    name, metric, metric_label, maximize, searchable = "detector", "map", "mAP@[.5:.95]", True, True

    def load(self):
        self.datamodule, fp_model = load_data_and_model(self.cfg)
        return self.datamodule, fp_model

    def evaluate(self, model) -> dict[str, float]:
        return evaluate_detections(model, self.datamodule.test_dataloader(), **eval_kwargs(self.cfg))

    def calibration_sets(self, search):
        if search is None:
            return calibration_batches(self.datamodule, self.cfg.calib.num_images, self.cfg.calib.get("image_seed")), None
        # calibration and validation images from the pool (calib and val splits) by search.selection;
        # the test split never takes part
        splits = [self.datamodule.dataset(s) for s in ("calib", "val")]
        pool = ConcatDataset(splits)
        classes = [c for ds in splits for c in ds.image_classes()]
        calib_idx, val_idx = select_sets(classes, self.datamodule.num_classes, self.datamodule.class_names, search)
        log.info("search: %d calibration and %d validation images from a pool of %d", len(calib_idx), len(val_idx),
                 len(pool))
        batch_size = self.cfg.calib.batch_size
        val = subset_batches(pool, val_idx, batch_size, detection_collate)

        def val_map(model) -> float:
            return evaluate_detections(model, val, progress=False, **eval_kwargs(self.cfg))["map"]

        return subset_batches(pool, calib_idx, batch_size, detection_collate), val_map

    def extra_results(self, fp: dict, quant: dict) -> dict:
        return {"retention": float(quant["map"] / fp["map"]) if fp["map"] > 0 else 0.0}

    def table(self, results: dict):
        return results_table(results)

    def table_rows(self, results: dict):
        return table_rows(results)

    def figure(self, fp_model, qmodel, run_dir: Path, title: str):
        cfg, n = self.cfg, self.cfg.eval.num_vis_images
        images = torch.cat([b[0] for b in itertools.islice(self.datamodule.test_dataloader(), n)])[:n]
        kwargs = {**eval_kwargs(cfg), "conf_thr": cfg.eval.vis_score_thr}
        path = plot_detections(
            images, detect(fp_model, images, **kwargs), detect(qmodel, images, **kwargs),
            self.datamodule.class_names, run_dir / "detections.png", score_thr=cfg.eval.vis_score_thr, title=title,
        )
        return path, "detections"

"""The classifier task of the shared job (``model.name=classifier``, recipe
``classifier_w4a4_search``): an ImageFolder dataset whose ``pool`` split gives the calibration
(and, for a search, validation) images, top-1 accuracy on the test split."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import default_collate

from ..core.task import TaskBase, prepared_datamodule, training_settings
from ..report import comparison_rows, comparison_table
from ..search import StagedEvaluator
from ..search.job import select_sets, subset_batches
from .train import evaluate_accuracy, pretrained_classifier

CLASSIFIER_ROWS = [
    ("top-1 accuracy", "fp.acc", "quant.acc", "{:.4f}"),
    ("model size (KiB)", "fp.size_kib", "quant.size_kib", "{:.1f}"),
]


def load_classification_data_and_model(cfg: DictConfig):
    """The data module (default data generated on first use) and the FP classifier (shipped,
    trained and cached on first use, or the user's checkpoint), in eval mode."""
    datamodule = prepared_datamodule(cfg)
    model = pretrained_classifier(datamodule, cfg.model, cache_dir=Path(cfg.cache_dir) / "models",
                                  trainer_kwargs=training_settings(cfg))
    return datamodule, model.eval()


class ClassificationTask(TaskBase):
    """Image classifiers (see :class:`~lightning_ptq.core.task.Task`)."""

    name, metric, metric_label, maximize, searchable = "classifier", "acc", "top-1 accuracy", True, True

    def load(self):
        self.datamodule, fp_model = load_classification_data_and_model(self.cfg)
        return self.datamodule, fp_model

    def evaluate(self, model) -> dict[str, float]:
        return {"acc": evaluate_accuracy(model, self.datamodule.test_dataloader())}

    def calibration_sets(self, search):
        dm, cfg = self.datamodule, self.cfg
        pool = dm.dataset("pool")
        if search is not None:
            calib_idx, val_idx = select_sets([[label] for label in dm.labels("pool")], dm.num_classes,
                                             dm.class_names, search)
        else:
            seed = cfg.calib.get("image_seed")
            order = (torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
                     if seed is not None else range(len(pool)))
            calib_idx, val_idx = list(order[:cfg.calib.num_images]), []
        batches = subset_batches(pool, calib_idx, cfg.calib.batch_size, default_collate)
        val = StagedEvaluator(subset_batches(pool, val_idx, cfg.calib.batch_size, default_collate)) if search is not None else None
        return batches, val

    def extra_results(self, fp: dict, quant: dict) -> dict:
        return {"retention": quant["acc"] / fp["acc"] if fp["acc"] > 0 else 0.0}

    def table(self, results: dict):
        return comparison_table(results, CLASSIFIER_ROWS, "lightning_ptq classifier", (
            f"retention (quant / FP accuracy) {results['retention']:.1%} | calibration "
            f"{results['calib_seconds']:.1f} s | size ratio {results['size_ratio']:.1f}x"))

    def table_rows(self, results: dict):
        return comparison_rows(results, CLASSIFIER_ROWS)

    def figure(self, fp_model, qmodel, run_dir: Path, title: str):
        return None  # the search logs its own chart

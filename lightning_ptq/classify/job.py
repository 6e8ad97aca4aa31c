"""The classifier job (``model.name=classifier``, recipe ``classifier_w4a4_search``): FP classifier
-> quantize -> calibrate on images of the pool split -> [per-layer search on a validation set
from the pool] -> top-1 accuracy on the test split -> report.

It shares the quantization core, the calibration entry point, the run folder layout and the
search step with the detector job (:mod:`lightning_ptq.app`).
"""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch.utils.data import default_collate

from ..pipeline import deploy_and_save, log_to_wandb, print_deploy_table, quantize_and_calibrate, run_results, save_run
from ..quant import QuantConfig
from ..report import comparison_rows, comparison_table
from ..search import StagedEvaluator
from ..search.job import run_search, search_results, select_sets, subset_batches
from ..search.report import search_summary_table
from .train import evaluate_accuracy, pretrained_classifier

CLASSIFIER_ROWS = [
    ("top-1 accuracy", "fp.acc", "quant.acc", "{:.4f}"),
    ("model size (KiB)", "fp.size_kib", "quant.size_kib", "{:.1f}"),
]


def load_classification_data_and_model(cfg: DictConfig):
    """The data module (default data generated on first use) and the FP classifier (trained and
    cached on first use, or the user's checkpoint), in eval mode."""
    datamodule = instantiate(cfg.data, batch_size=cfg.calib.batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = pretrained_classifier(datamodule, cfg.model, cache_dir=Path(cfg.cache_dir) / "models",
                                  trainer_kwargs=OmegaConf.to_container(cfg.trainer, resolve=True))
    return datamodule, model.eval()


def run_classification(cfg: DictConfig, run_dir: Path, qcfg: QuantConfig, logger=None) -> dict:
    """The classifier job; writes ``results.json`` and the quantized and packed weights (with
    ``search``: also the search report) to ``run_dir``; returns the results."""
    datamodule, fp_model = load_classification_data_and_model(cfg)
    test = datamodule.test_dataloader()
    fp = {"acc": evaluate_accuracy(fp_model, test)}
    pool = datamodule.dataset("pool")
    if cfg.get("search"):
        calib_idx, val_idx = select_sets([[label] for label in datamodule.labels("pool")], datamodule.num_classes,
                                         datamodule.class_names, cfg.search)
    else:
        calib_idx, val_idx = list(range(min(cfg.calib.num_images, len(pool)))), []
    batches = subset_batches(pool, calib_idx, cfg.calib.batch_size, default_collate)
    qmodel, calib_seconds = quantize_and_calibrate(
        fp_model, qcfg, batches, cfg.calib, cfg.trainer, logger,
        checkpoint_dir=run_dir / "calib_ckpt" if cfg.calib.resume else None,
    )
    quant = {"acc": evaluate_accuracy(qmodel, test)}
    search_numbers = {}
    if cfg.get("search"):
        val = StagedEvaluator(subset_batches(pool, val_idx, cfg.calib.batch_size, default_collate))
        search = run_search(cfg, run_dir, qmodel, batches, val, "accuracy", logger=logger)
        searched = {"acc": evaluate_accuracy(qmodel, test)}
        search_numbers = search_results(search, fp["acc"], quant["acc"], searched["acc"])
        quant = searched  # the job's result is the searched model; search.test_start is the one before

    results = run_results(fp_model, qmodel, qcfg, fp, quant, batches, calib_seconds) | search_numbers
    results["retention"] = quant["acc"] / fp["acc"] if fp["acc"] > 0 else 0.0
    save_run(run_dir, qmodel, results)
    results |= deploy_and_save(cfg, fp_model, qmodel, batches, run_dir, results,
                               lambda m: {"acc": evaluate_accuracy(m, test)})
    Console().print(comparison_table(results, CLASSIFIER_ROWS, "lightning_ptq classifier", (
        f"retention (quant / FP accuracy) {results['retention']:.1%} | calibration {calib_seconds:.1f} s | "
        f"size ratio {results['size_ratio']:.1f}x")))
    print_deploy_table(results, "acc", "top-1 accuracy")
    if search_numbers:
        Console().print(search_summary_table(results, "top-1 accuracy"))
    if logger is not None:
        log_to_wandb(logger, results, comparison_rows(results, CLASSIFIER_ROWS), None, "", cfg)  # the search logged its chart
    return results

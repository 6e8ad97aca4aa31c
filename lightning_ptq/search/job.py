"""The search step of the Hydra jobs (``+recipe=classifier_w4a4_search``, ``yolo_w4a4_search``):
choosing the calibration and validation sets from the pool, running the search on the
calibrated model, and writing its report next to the job's results."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

from ..core import distributed
from ..core.errors import ConfigError
from .balanced import balanced_split, random_split
from .config import SearchJobConfig
from .layerwise import SearchResult, search_layers
from .report import write_search_report

log = logging.getLogger(__name__)


def search_config(node: DictConfig | dict, mode: str) -> SearchJobConfig:
    """The ``search`` group as the :class:`SearchJobConfig` the job searches with, validated once,
    here; ``mode`` is the task's direction (``max`` or ``min``), which the group may not contradict."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    given = values.pop("mode", None)
    if given is not None and given != mode:
        raise ConfigError(f"search.mode={given!r}, but this task's metric is {'maximised' if mode == 'max' else 'minimised'} "
                          f"(mode={mode!r}): drop search.mode, the task sets it.")
    return SearchJobConfig.from_dict({**values, "mode": mode})


def select_sets(image_classes: Sequence, num_classes: int, class_names: Sequence[str],
                node: SearchJobConfig) -> tuple[list[int], list[int]]:
    """Calibration and validation indices into the pool: class-balanced, or (the baseline) random
    with as many images as the balanced sets would have (for detection, where an image counts for
    each of its classes, that is fewer than ``per_class x classes``)."""
    calib, val = balanced_split(image_classes, num_classes, node.calib_per_class, node.val_per_class, node.seed,
                                class_names)
    if node.selection == "balanced":
        return calib, val
    return random_split(len(image_classes), len(calib), len(val), node.seed)


def subset_batches(dataset: Dataset, indices: list[int], batch_size: int, collate: Callable) -> list:
    """The images ``indices`` of ``dataset`` as a list of collated batches (kept in memory: the
    search evaluates on them many times)."""
    subset = Subset(dataset, indices)
    return [collate([subset[i] for i in range(start, min(start + batch_size, len(subset)))])
            for start in range(0, len(subset), batch_size)]


def run_search(config: SearchJobConfig, weight_lr: float, run_dir: Path, qmodel, calib_batches: list, evaluator,
               metric: str, progress: bool = True, logger=None) -> SearchResult:
    """Search ``qmodel`` in place; write its report to ``run_dir`` (:func:`write_search_report`; under
    DDP every rank searches, sharing the evaluations, and rank 0 writes).
    ``weight_lr``: the calibration's (tuned weights are not in the parameter file: a warning)."""
    if weight_lr > 0:
        log.warning("calib.weight_lr=%s tuned the weights, but layer_params.json holds bits and ranges only: "
                    "calib.layer_params=<file> would put the searched ranges on the original weights. Reload "
                    "this model from quantized_state_dict.pt, or search with calib.weight_lr=0.", weight_lr)
    result = search_layers(qmodel, calib_batches, evaluator, config, progress=progress)
    if distributed.rank() == 0:
        write_search_report(result, qmodel, run_dir, config.threshold, f"validation {metric}", logger)
    return result


def search_results(result: SearchResult, test_fp: float, test_before: float, test_after: float) -> dict:
    """The search's numbers for ``results.json``: validation and test side by side, the cost,
    the average bits."""
    return {
        "search.val_fp": result.fp_metric, "search.val_start": result.start_metric,
        "search.val_final": result.final_metric, "search.test_fp": test_fp, "search.test_start": test_before,
        "search.test_final": test_after,
        # the share of the quantized model's gap to FP that the search closed, on test
        "search.test_gap_recovered": (test_after - test_before) / (test_fp - test_before)
        if test_fp != test_before else float("nan"),
        "search.reached": result.reached, "search.evaluations": sum(result.evaluations.values()),
        "search.minutes": sum(result.seconds.values()) / 60, "search.targets": sum(r.target for r in result.layers),
        "search.float_layers": len(result.float_layers), **{f"search.{k}": v for k, v in result.average_bits().items()},
    }

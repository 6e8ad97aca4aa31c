"""The job: FP model -> quantize -> calibrate -> evaluate FP vs quantized -> [per-layer search]
-> [export] -> save -> report (table, W&B).

With ``trainer.strategy=ddp trainer.devices=N`` (or ``trainer.num_nodes``, under torchrun or
SLURM) calibration runs on N processes, each on its share of every calibration batch, all ending
with the same model (:mod:`lightning_ptq.core.distributed`); the processes start once the FP model
is loaded and evaluated. The per-layer search runs on all of them, each evaluating its share of
every round of candidates; the rest (test evaluation, export, saving, the report) is rank 0's
alone (the others return an empty dict).

``run_job(cfg, run_dir)`` does it once for every kind of model and returns the results dict; what
differs between detectors, keypoint models and classifiers comes from the :class:`Task` that
``model.task._target_`` names (:mod:`lightning_ptq.core.task`). ``__main__`` is the thin Hydra
wrapper. Every setting is checked before anything is loaded or written.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from .core import distributed
from .core.errors import ConfigError
from .core.memory import PeakRSS
from .core.task import missing_members
from .pipeline import (
    check_calib_config, check_loss_family, deploy_and_save, export_config, log_to_wandb, print_deploy_table,
    quantize_and_calibrate, run_results, save_run,
)
from .quant import QuantConfig
from .search.job import run_search, search_config, search_results
from .search.report import search_summary_table


def make_task(cfg: DictConfig):
    """The task ``model.task._target_`` names, built with ``cfg``; a ConfigError when there is
    none, it cannot be built, or it lacks members of the Task protocol."""
    node = cfg.model.get("task")
    if node is None or "_target_" not in node:
        raise ConfigError("model.task._target_ is not set: name the task class of this model, e.g. "
                          "lightning_ptq.detection.DetectionTask (the model configs in conf/model set it).")
    try:
        task_class = get_class(node._target_)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"model.task._target_={node._target_!r} is not a class that can be imported "
                          f"({str(err).splitlines()[0]}).") from None
    task = task_class(cfg)
    missing = missing_members(task)
    if missing:
        raise ConfigError(f"model.task._target_={node._target_!r} does not implement the Task protocol "
                          f"(lightning_ptq.core.task.Task): it lacks {', '.join(missing)}.")
    return task


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the job ``cfg`` describes; write its files to ``run_dir``; return the results."""
    run_dir = Path(run_dir)
    task = make_task(cfg)
    qcfg = QuantConfig.from_dict(OmegaConf.to_container(cfg.quant, resolve=True))
    calib = check_calib_config(cfg.calib)
    export = export_config(cfg.get("export"))
    check_loss_family(calib.loss, task.name)
    task.check()
    search = None
    if cfg.get("search"):
        if not task.searchable:
            raise ConfigError(f"search: the per-layer search does not run on a {task.name} model; drop search=.")
        search = search_config(cfg.search, "max" if task.maximize else "min")
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    logger = instantiate(cfg.logger) if cfg.logger else None

    _, fp_model = task.load()
    fp = task.evaluate(fp_model)
    batches, validate = task.calibration_sets(search)
    # from here on, as many processes as the trainer settings ask for
    ranks = distributed.launch(cfg.trainer, in_sweep=_in_sweep())
    with PeakRSS() as memory:
        qmodel, calib_seconds, report = quantize_and_calibrate(
            fp_model, qcfg, distributed.shard(batches), calib, cfg.trainer, logger,
            checkpoint_dir=run_dir / "calib_ckpt" if calib.resume else None,
        )
    main = distributed.rank() == 0
    quant = task.evaluate(qmodel) if main else {}
    result = None
    if search is not None:  # on every rank: they share its evaluations
        result = run_search(search, calib.weight_lr, run_dir, qmodel, batches, validate, task.metric_label,
                            progress=cfg.trainer.enable_progress_bar and main, logger=logger)
    if ranks > 1:
        distributed.finish()
        if not main:
            return {}
    search_numbers = {}
    if result is not None:
        searched = task.evaluate(qmodel)
        search_numbers = search_results(result, fp[task.metric], quant[task.metric], searched[task.metric])
        quant = searched  # the job's result is the searched model; search.test_start is the one before

    results = run_results(fp_model, qmodel, qcfg, fp, quant, batches, calib_seconds) | search_numbers
    results["calib_peak_rss_mib"] = memory.peak
    results |= report.results()
    results |= task.extra_results(fp, quant)
    save_run(run_dir, qmodel, results)
    results |= deploy_and_save(export, fp_model, qmodel, batches, run_dir, results, task.evaluate)
    console = Console()
    console.print(task.table(results))
    print_deploy_table(results, task.metric, task.metric_label)
    if search is not None:
        console.print(search_summary_table(results, task.metric_label))
    figure = task.figure(fp_model, qmodel, run_dir, f"W{qcfg.w_bits}A{qcfg.a_bits}")
    if logger is not None:
        image, key = figure if figure else (None, "")
        log_to_wandb(logger, results, task.table_rows(results), image, key, cfg)
    return results

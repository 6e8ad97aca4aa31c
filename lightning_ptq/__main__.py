"""``python -m lightning_ptq +recipe=yolo_w4a4 [overrides]``: the Hydra entry point."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .hydra_setup import config_dir


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from .job import run_job  # imported here so that --help and config errors answer fast
    from .core import UserError

    try:
        results = run_job(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as err:
        # A problem with the input, not a bug: one paragraph saying what and how to fix it.
        print(f"lightning_ptq: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    return float(results[cfg.optimized_metric])


if __name__ == "__main__":
    main()

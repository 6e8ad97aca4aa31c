"""``python -m lightning_ptq +recipe=yolo_w4a4 [overrides]``: the Hydra entry point."""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .hydra_setup import config_dir, register_recipes

register_recipes()


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from .app import run  # imported here so that --help and config errors answer fast

    results = run(cfg, HydraConfig.get().runtime.output_dir)
    return float(results[cfg.optimized_metric])


if __name__ == "__main__":
    main()

"""``python -m lightning_ptq +recipe=yolo_w4a4 [overrides]``: the Hydra entry point."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .core import UserError
from .hydra_setup import compose_config, config_dir


def _fail(err: UserError) -> None:
    # A problem with the input, not a bug: one paragraph saying what and how to fix it.
    print(f"lightning_ptq: {type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(2)


def _check_setting_names(argv: list[str]) -> None:
    """Name a misspelled setting (on the command line or in a config file) with its closest
    match, or a value of the wrong type, before Hydra composes (Hydra's own message names no
    closest key); sweeps (``-m``) are left to Hydra."""
    if "-m" in argv or "--multirun" in argv:
        return
    try:
        compose_config([a for a in argv if "=" in a and not a.startswith("-")])
    except UserError as err:
        _fail(err)
    except Exception:  # noqa: BLE001 (a bad group choice and the like: Hydra's message follows)
        return


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from .job import run_job  # imported here so that --help and config errors answer fast

    try:
        results = run_job(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as err:
        _fail(err)
    # a process of a distributed calibration other than rank 0 has no results to give a sweeper
    return float(results[cfg.optimized_metric]) if results else float("nan")


def cli() -> None:
    """``python -m lightning_ptq`` and the ``lightning-ptq`` command."""
    _check_setting_names(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()

"""Finding the Hydra configs.

``conf/`` sits at the top of the repository and is installed as the package
``lightning_ptq.conf``; ``importlib.resources`` finds it in a source checkout (editable install)
and in a plain ``pip install .`` alike. The recipes are the config group ``conf/recipe``
(``+recipe=yolo_w4a4`` selects one; each is a ``_global_`` package).
"""
from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig


def config_dir() -> str:
    return str(files("lightning_ptq.conf"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "recipe").glob("*.yaml"))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The main job's config with ``overrides``, outside a Hydra run (tests, benchmarks,
    notebooks). ``${hydra:...}`` values stay unresolved."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))

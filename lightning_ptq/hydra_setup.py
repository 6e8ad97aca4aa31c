"""Finding the Hydra configs, and registering the recipes as the ``recipe`` group.

``conf/`` and ``recipes/`` sit at the top of the repository and are installed as the packages
``lightning_ptq.conf`` and ``lightning_ptq.recipes``; ``importlib.resources`` finds them in a
source checkout (editable install) and in a plain ``pip install .`` alike. Recipes are stored in
Hydra's ConfigStore under the group ``recipe`` so that ``+recipe=yolo_w4a4`` selects one.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


def config_dir() -> str:
    return str(files("lightning_ptq.conf"))


def recipe_dir() -> Path:
    return Path(str(files("lightning_ptq.recipes")))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def register_recipes() -> None:
    """Store every ``recipes/*.yaml`` in the ConfigStore group ``recipe`` (package ``_global_``)."""
    store = ConfigStore.instance()
    for path in sorted(recipe_dir().glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        store.store(group="recipe", name=path.stem, node=node, package="_global_", provider="lightning_ptq")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The main job's config with ``overrides``, outside a Hydra run (tests, benchmarks, notebooks);
    recipes are registered first so ``+recipe=...`` works. ``${hydra:...}`` values stay unresolved."""
    register_recipes()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))

"""Finding the Hydra configs, and naming a misspelled setting.

``conf/`` sits at the top of the repository and is installed as the package
``lightning_ptq.conf``; ``importlib.resources`` finds it in a source checkout (editable install)
and in a plain ``pip install .`` alike. The recipes are the config group ``conf/recipe``
(``+recipe=yolo_w4a4`` selects one; each is a ``_global_`` package).
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from .core.errors import ConfigError


def config_dir() -> str:
    return str(files("lightning_ptq.conf"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "recipe").glob("*.yaml"))


def _compose(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The main job's config with ``overrides``, outside a Hydra run (tests, benchmarks,
    notebooks). ``${hydra:...}`` values stay unresolved. A setting that does not exist is a
    :class:`ConfigError` naming it, the allowed keys and the closest one."""
    try:
        return _compose(overrides)
    except ConfigCompositionException:
        check_override_keys(overrides)
        raise


def _is_selection(override: str, groups: set[str]) -> bool:
    key = override.split("=", 1)[0]
    return override.startswith(("+", "~")) or key.split("@")[0] in groups or "=" not in override


def check_override_keys(overrides: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first ``key=value`` override whose key the composed
    config lacks: the key, the keys allowed where it goes wrong, and the closest of them. Group
    choices (``export=onnx``), additions (``+key=``), deletions (``~key``) and ``hydra.*`` are
    left to Hydra."""
    groups = {p.name for p in Path(config_dir()).iterdir() if p.is_dir() and not p.name.startswith("_")}
    selections = [o for o in overrides if _is_selection(o, groups)]
    base = _compose(selections)
    for override in overrides:
        if override in selections or override.startswith("hydra."):
            continue
        key = override.split("=", 1)[0]
        node, path = base, []
        for part in key.split("."):
            if not isinstance(node, DictConfig):
                break  # below a value: Hydra says what is wrong
            if part not in node:
                where = ".".join(path) or "the config"
                allowed = sorted(str(k) for k in node.keys())
                close = difflib.get_close_matches(part, allowed, n=1)
                hint = f" Did you mean {'.'.join([*path, close[0]])}?" if close else ""
                raise ConfigError(f"{key!r} is not a setting: {where} has no key {part!r} (its keys: "
                                  f"{', '.join(allowed)}).{hint} To add a new key on purpose, write +{override}.")
            node, path = node[part], [*path, part]

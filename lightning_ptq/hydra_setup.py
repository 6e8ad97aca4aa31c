"""Finding the Hydra configs, their schemas, and naming a misspelled setting.

``conf/`` sits at the top of the repository and is installed as the package
``lightning_ptq.conf``; ``importlib.resources`` finds it in a source checkout (editable install)
and in a plain ``pip install .`` alike. The recipes are the config group ``conf/recipe``
(``+recipe=yolo_w4a4`` selects one; each is a ``_global_`` package).

The ``calib``, ``search`` and ``export`` groups are typed by the dataclasses the job builds from
them (:data:`SCHEMAS`), registered in Hydra's ConfigStore when this module is imported; each
group's files start from theirs (``defaults: [<group>_schema, _self_]``), so Hydra rejects a
value of the wrong type or an unknown key while composing, and the job's dataclass then checks
the values once.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import is_dataclass
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from .calib.config import CalibJobConfig
from .core.errors import ConfigError, check_keys
from .export.config import ExportConfig
from .search.config import SearchJobConfig

SCHEMAS = {"calib": CalibJobConfig, "search": SearchJobConfig, "export": ExportConfig}


def register_schemas() -> None:
    """Store :data:`SCHEMAS` in Hydra's ConfigStore as ``<group>/<group>_schema``."""
    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name=f"{group}_schema", node=schema)


register_schemas()


def config_dir() -> str:
    return str(files("lightning_ptq.conf"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "recipe").glob("*.yaml"))


def _compose(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The main job's config with ``overrides``, outside a Hydra run (tests, benchmarks,
    notebooks). ``${hydra:...}`` values stay unresolved. A setting that does not exist, given
    as an override or in a config file, is a :class:`ConfigError` naming it, the allowed keys
    and the closest one."""
    try:
        return _compose(overrides)
    except ConfigCompositionException as err:
        check_schema_key(err)
        check_override_keys(overrides)
        raise


def check_schema_key(err: ConfigCompositionException) -> None:
    """Raise :class:`ConfigError` when ``err`` is Hydra rejecting what a group's schema does not
    allow: an unknown key (e.g. misspelled in a recipe file; named with the allowed keys and the
    closest) or a value of the wrong type."""
    cause = err.__cause__ or err.__context__  # Hydra chains some errors with "from", some without
    if isinstance(cause, ConfigKeyError) and cause.full_key and is_dataclass(cause.object_type):
        where, _, key = cause.full_key.rpartition(".")
        check_keys({key: None}, cause.object_type, where)
    if isinstance(cause, ValidationError) and cause.full_key:  # a value of the wrong type
        raise ConfigError(f"{cause.full_key}: {str(cause).splitlines()[0]}") from None


def _is_selection(override: str, groups: set[str]) -> bool:
    key = override.split("=", 1)[0]
    return (override.startswith(("+", "~", "hydra.")) or key.split("@")[0] in groups
            or "=" not in override)


def check_override_keys(overrides: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first ``key=value`` override whose key the composed
    config lacks: the key, the keys allowed where it goes wrong, and the closest of them. Group
    choices (``export=onnx``), additions (``+key=``), deletions (``~key``) and ``hydra.*`` are
    left to Hydra."""
    groups = {p.name for p in Path(config_dir()).iterdir() if p.is_dir() and not p.name.startswith("_")}
    selections = [o for o in overrides if _is_selection(o, groups)]
    base = _compose(selections)
    for override in overrides:
        if override in selections:
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
                if not is_dataclass(OmegaConf.get_type(node)):  # a schema's groups take no new keys
                    hint += f" To add a new key on purpose, write +{override}."
                raise ConfigError(f"{key!r} is not a setting: {where} has no key {part!r} (its keys: "
                                  f"{', '.join(allowed)}).{hint}")
            node, path = node[part], [*path, part]

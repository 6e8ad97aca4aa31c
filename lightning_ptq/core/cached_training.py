"""Train once, reuse after: the embedded default models (detectors, keypoint model, classifier)
are trained by a Lightning run the first time they are asked for and cached under a key that
hashes every setting that changes them; an interrupted training resumes from its last epoch.

The default models of the default recipes also ship with the package (``lightning_ptq/pretrained``,
made by ``python scripts/ship_pretrained.py``, which runs this same training): when the cache
has no file of that key, the shipped file of the same key is used, so a first run does not wait
for a pretraining. Any other setting or data changes the key and trains as before;
``LIGHTNING_PTQ_TRAIN_DEFAULTS=1`` ignores the shipped files (to reproduce them)."""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from importlib.resources import files
from pathlib import Path

import lightning as L
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

SHIPPED_ENV = "LIGHTNING_PTQ_TRAIN_DEFAULTS"


def shipped_dir() -> Path:
    """The folder of the pretrained default models that ship with the package."""
    return Path(str(files("lightning_ptq"))) / "pretrained"


def train_settings(overrides: Mapping, defaults: Mapping) -> dict:
    """``defaults`` updated with the user's ``model.train`` ``overrides``; an unknown key is an
    error naming it and the allowed ones."""
    train = {**defaults, **overrides}
    unknown = sorted(set(train) - set(defaults))
    if unknown:
        raise ConfigError(f"model.train has unknown keys {unknown}: allowed are {sorted(defaults)}.")
    return train


def train_or_load(path: Path, what: str, epochs: int, load: Callable[[Path], nn.Module],
                  train: Callable[[Path], L.LightningModule],
                  save: Callable[[nn.Module, Path, dict[str, float]], None],
                  metric_prefixes: tuple[str, ...] = ("val/",)) -> nn.Module:
    """The model cached at ``path`` (``load(path)``), else the shipped one of the same name (see
    the module docstring), else ``train(work_dir)``'s module's model,
    saved there with its final ``metric_prefixes`` metrics (``save(model, path, metrics)``); in
    eval mode. ``work_dir`` (``path`` with suffix ``.training``) holds Lightning's checkpoints, so
    an interrupted training resumes; it is removed once the model is saved."""
    if path.is_file():
        log.info("Using the cached %s %s", what, path)
        return load(path).eval()
    shipped = shipped_dir() / path.name
    if shipped.is_file() and os.environ.get(SHIPPED_ENV) != "1":
        log.info("Using the shipped %s %s (set %s=1 to train it instead)", what, shipped, SHIPPED_ENV)
        return load(shipped).eval()
    log.info("No cached %s at %s: training one (%d epochs).", what, path, epochs)
    work_dir = path.with_suffix(".training")
    module = train(work_dir)
    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items() if k.startswith(metric_prefixes)}
    save(module.model, path, metrics)
    shutil.rmtree(work_dir, ignore_errors=True)
    return module.model.eval()

"""Saving and loading detector checkpoints (read safely by :mod:`lightning_ptq.core.checkpoint`).

Our own file is a plain dict: ``{"format", "model_kwargs", "num_classes", "image_size",
"class_names", "state_dict", "metrics"}``, where ``format`` names the detector family
(``lightning_ptq.<family>/1``, see :func:`checkpoint_format`). A user may also give a Lightning
checkpoint of a module holding the detector as ``model`` or a bare state_dict.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..core.checkpoint import CheckpointMismatchError, load_strict, read_checkpoint, state_dict_of
from ..core.io import atomic_torch_save
from .detector import DETECTORS, build_detector


def checkpoint_format(family: str) -> str:
    """The ``format`` of our checkpoints of a ``family`` detector (a key of ``DETECTORS``)."""
    return f"lightning_ptq.{family}/1"


def save_detector(model: nn.Module, path: str | os.PathLike, model_kwargs: dict, class_names: list[str],
                  metrics: dict | None = None) -> Path:
    """Write ``model`` (any family of ``DETECTORS``) with what is needed to rebuild it; atomic (a
    crash leaves no half file)."""
    payload = {
        "format": checkpoint_format(model.family), "model_kwargs": dict(model_kwargs),
        "num_classes": model.num_classes, "image_size": model.image_size, "class_names": list(class_names),
        "state_dict": model.state_dict(), "metrics": dict(metrics or {}),
    }
    return atomic_torch_save(payload, path)


def load_detector(path: str | os.PathLike, num_classes: int, image_size: int, model_kwargs: dict,
                  name: str = "yolo") -> nn.Module:
    """Build a detector of family ``name`` and load the checkpoint at ``path`` into it.

    Architecture settings stored in our own checkpoints win over ``model_kwargs``; our checkpoint
    of another family, a number of classes or image size that disagrees with the data is an
    error, as are missing, unexpected or wrongly shaped weights.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    families = {checkpoint_format(family): family for family in DETECTORS}
    family = families.get(payload.get("format"))
    if family is not None and family != name:
        raise CheckpointMismatchError(
            f"Checkpoint {path} holds a {family} detector (format {payload['format']!r}) but model.name={name!r}. "
            f"Use it with model.name={family} (and that family's model config), or give a {name} "
            f"checkpoint, or set model.checkpoint=null to pretrain one."
        )
    if family is not None:
        model_kwargs = payload["model_kwargs"]
        for key, ours, data in (("num_classes", payload["num_classes"], num_classes),
                                ("image_size", payload["image_size"], image_size)):
            if ours != data:
                raise CheckpointMismatchError(
                    f"Checkpoint {path} was trained with {key}={ours} but the data has {key}={data}. "
                    f"Use a checkpoint trained on this data, or set model.checkpoint=null to pretrain one."
                )
    model = build_detector(name, num_classes, image_size, model_kwargs)
    load_strict(model, state_dict_of(payload, path), path,
                f"the configured detector (model.name={model.family}, num_classes={model.num_classes}, "
                f"model.kwargs={model_kwargs})",
                "Set model.name, model.kwargs and the data to what the checkpoint was trained with, or use "
                "model.checkpoint=null to pretrain one.")
    return model

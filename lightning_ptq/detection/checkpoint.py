"""Saving and loading detector checkpoints (read safely by :mod:`lightning_ptq.core.checkpoint`).

Our own file is a plain dict: ``{"format", "target", "model_kwargs", "num_classes", "image_size",
"class_names", "state_dict", "metrics"}``, where ``format`` names the detector family
(``lightning_ptq.<family>/1``, see :func:`checkpoint_format`) and ``target`` its class. A user may
also give a Lightning checkpoint of a module holding the detector as ``model`` or a bare state_dict.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..core.checkpoint import CheckpointMismatchError, load_strict, read_checkpoint, state_dict_of
from ..core.io import atomic_torch_save
from .detector import DETECTORS, build_detector, detector_class, target_of


def checkpoint_format(family: str) -> str:
    """The ``format`` of our checkpoints of a ``family`` detector (a key of ``DETECTORS``)."""
    return f"lightning_ptq.{family}/1"


def save_detector(model: nn.Module, path: str | os.PathLike, model_kwargs: dict, class_names: list[str],
                  metrics: dict | None = None) -> Path:
    """Write the detector ``model`` with what is needed to rebuild it; atomic (a crash leaves no
    half file)."""
    payload = {
        "format": checkpoint_format(model.family), "target": target_of(type(model)), "model_kwargs": dict(model_kwargs),
        "num_classes": len(class_names), "image_size": getattr(model, "image_size", None), "class_names": list(class_names),
        "state_dict": model.state_dict(), "metrics": dict(metrics or {}),
    }
    return atomic_torch_save(payload, path)


def load_detector(path: str | os.PathLike, num_classes: int, image_size: int, model_kwargs: dict,
                  target: str | type = "lightning_ptq.detection.YOLO") -> nn.Module:
    """Build the detector class ``target`` names and load the checkpoint at ``path`` into it.

    Architecture settings stored in our own checkpoints win over ``model_kwargs``; our checkpoint
    of another family, a number of classes or image size that disagrees with the data is an
    error, as are missing, unexpected or wrongly shaped weights.
    """
    path, cls = Path(path), detector_class(target)
    payload = read_checkpoint(path)
    format_ = payload.get("format")
    # a detector checkpoint of ours: it names its class (older ones: one of our families)
    ours = "target" in payload or format_ in {checkpoint_format(family) for family in DETECTORS}
    if ours and format_ != checkpoint_format(cls.family):
        saved = payload.get("target", format_)
        raise CheckpointMismatchError(
            f"Checkpoint {path} holds another detector ({saved}, format {format_!r}) but model._target_ is "
            f"{target_of(cls)} (family {cls.family!r}). Give model._target_ the checkpoint's class (and that "
            f"family's model config), give a checkpoint of {cls.__name__}, or set model.checkpoint=null to "
            f"pretrain one."
        )
    if ours:
        model_kwargs = payload["model_kwargs"]
        for key, saved, data in (("num_classes", payload["num_classes"], num_classes),
                                 ("image_size", payload["image_size"], image_size)):
            if saved is not None and saved != data:
                raise CheckpointMismatchError(
                    f"Checkpoint {path} was trained with {key}={saved} but the data has {key}={data}. "
                    f"Use a checkpoint trained on this data, or set model.checkpoint=null to pretrain one."
                )
    model = build_detector(cls, num_classes, image_size, model_kwargs)
    load_strict(model, state_dict_of(payload, path), path,
                f"the configured detector (model._target_={target_of(cls)}, num_classes={num_classes}, "
                f"model.kwargs={model_kwargs})",
                "Set model._target_, model.kwargs and the data to what the checkpoint was trained with, or use "
                "model.checkpoint=null to pretrain one.")
    return model

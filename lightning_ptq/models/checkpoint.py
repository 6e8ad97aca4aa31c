"""Saving and loading detector checkpoints safely (``weights_only=True``), with clear errors.

Our own file is a plain dict: ``{"format", "model_kwargs", "num_classes", "image_size",
"class_names", "state_dict", "metrics"}``, where ``format`` names the detector family
(``lightning_ptq.<family>/1``, see :func:`checkpoint_format`). A user may also give a Lightning
checkpoint of a module holding the detector as ``model`` or a bare state_dict.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..core import UserError
from ..io import atomic_torch_save
from .detector import DETECTORS, build_detector


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CorruptCheckpointError(UserError, ValueError):
    """The file is not a readable, tensors-only PyTorch checkpoint."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint's weights do not fit the configured model."""


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


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"Checkpoint {path} does not exist. Give an existing file with model.checkpoint=/path/to/"
            f"file.pt, or model.checkpoint=null to pretrain (and cache) the default detector."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler fails on garbage with many kinds (KeyError, EOFError, ...)
        text = str(err)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise CorruptCheckpointError(
                f"Checkpoint {path} contains pickled Python objects ({refused.group(1)}), which are not "
                f"loaded because unpickling them could run code. Save the weights only: "
                f"torch.save(model.state_dict(), path)."
            ) from err
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        detail = detail.group(1) if detail else (text.strip().splitlines() or ["no detail"])[0]
        raise CorruptCheckpointError(
            f"Checkpoint {path} cannot be read as a PyTorch file ({type(err).__name__}: {detail}); it may "
            f"be truncated or not a torch.save file. Re-save it, or set model.checkpoint=null to "
            f"pretrain the default detector."
        ) from err
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(
            f"Checkpoint {path} holds a {type(payload).__name__}, not a dict of weights. Save "
            f"model.state_dict() (or a Lightning checkpoint) instead."
        )
    return payload


def state_dict_of(payload: dict, path: Path) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint ``payload``: our ``state_dict`` entry, a bare state_dict, or a
    Lightning checkpoint of a module holding the network as ``model`` (prefix removed)."""
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"Checkpoint {path} has no state_dict of tensors.")
    if any(k.startswith("model.") for k in state):  # Lightning checkpoint of a module with .model
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


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


def load_strict(model: nn.Module, state: dict, path: Path, fits: str, fix: str) -> None:
    """Load ``state`` into ``model``; missing, unexpected or mis-shaped tensors are a
    :class:`CheckpointMismatchError` naming them, what the checkpoint should fit and the fix."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label} ({len(items)}): {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if items
        )
        raise CheckpointMismatchError(f"Checkpoint {path} does not fit {fits}: {detail}. {fix}")
    model.load_state_dict(state)

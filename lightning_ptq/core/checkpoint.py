"""Reading checkpoints safely (``weights_only=True``) and loading them strictly, with errors that
say what is wrong and what to do; the model families' own checkpoint formats build on it."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from .errors import UserError


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CorruptCheckpointError(UserError, ValueError):
    """The file is not a readable, tensors-only PyTorch checkpoint."""


class PickledObjectsError(CorruptCheckpointError):
    """A checkpoint that holds pickled Python objects (not only tensors): not read safely."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint's weights do not fit the configured model."""


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
            raise PickledObjectsError(
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
    if "pytorch-lightning_version" in payload and any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}  # a module's .model
    return state


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

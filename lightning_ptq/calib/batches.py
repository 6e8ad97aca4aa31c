"""Getting the model input out of a batch of unknown structure."""
from __future__ import annotations

from collections.abc import Mapping

import torch

_INPUT_KEYS = ("image", "images", "img", "input", "inputs", "x", "pixel_values")


def batch_inputs(batch) -> torch.Tensor:
    """The model input of ``batch``: the tensor itself, the first element of a tuple/list, or
    the value of a usual input key of a dict. Pass your own ``forward_fn`` for anything else."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: expected a "
        f"tensor, a tuple/list starting with a tensor, or a dict with one of the keys "
        f"{list(_INPUT_KEYS)}. Pass forward_fn=lambda model, batch: model(...) to say how."
    )

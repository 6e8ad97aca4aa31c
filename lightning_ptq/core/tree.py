"""Walking nested batches and outputs: the model input of a batch, the tensors of an output, the
first module whose output is not finite."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

_INPUT_KEYS = ("image", "images", "img", "input", "inputs", "x", "pixel_values")


def _images(x) -> bool:
    """A list of image tensors, as torchvision's detection models take them."""
    return isinstance(x, (tuple, list)) and bool(x) and all(isinstance(i, torch.Tensor) and i.dim() == 3 for i in x)


def batch_inputs(batch) -> torch.Tensor | list[torch.Tensor]:
    """The model input of ``batch``: the tensor itself, the first element of a tuple/list (a
    tensor, or a list of [3, H, W] image tensors as in torchvision's detection batches
    ``(images, targets)``), or the value of a usual input key of a dict. Pass your own
    ``forward_fn`` for anything else."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and (isinstance(batch[0], torch.Tensor) or _images(batch[0])):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: expected a "
        f"tensor, a tuple/list starting with a tensor or a list of image tensors, or a dict with one of the keys "
        f"{list(_INPUT_KEYS)}. Pass forward_fn=lambda model, batch: model(...) to say how."
    )


def batch_size(batch) -> int:
    """How many images ``batch`` holds (1 for a structure :func:`batch_inputs` does not know)."""
    try:
        return len(batch_inputs(batch))
    except TypeError:
        return 1


def flatten_tensors(out) -> list[torch.Tensor]:
    """All tensors in a nested output (tensor, tuple/list, dict) in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flatten_tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_tensors(o)]
    return []


@torch.no_grad()
def first_non_finite_module(model: nn.Module, batch, forward_fn: Callable[[nn.Module, object], object] | None = None
                            ) -> str | None:
    """Name of the first module (in call order) whose output holds NaN or inf on ``batch``;
    ``"<input>"`` when the batch itself does; ``None`` when every output is finite.
    ``forward_fn(model, batch)`` runs the model (default: ``model(batch_inputs(batch))``)."""
    try:
        if not torch.isfinite(batch_inputs(batch)).all():
            return "<input>"
    except TypeError:  # a batch structure only forward_fn understands
        pass
    found: list[str] = []

    def hook(name):
        def check(module, args, out):
            if not found and any(not torch.isfinite(t).all() for t in flatten_tensors(out) if t.is_floating_point()):
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        if forward_fn is None:
            model(batch_inputs(batch))
        else:
            forward_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None

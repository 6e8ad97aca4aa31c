"""Fold BatchNorm into the preceding convolution (inference semantics).

No graph tracing: a fold candidate is a ``Conv2d`` child immediately followed, in registration
order, by a ``BatchNorm2d`` child of the same parent with matching channel count. That is exact
for ``nn.Sequential`` and holds for the usual ``conv -> bn -> act`` blocks. Passing
``example_input`` checks numerically that the folded model computes what the original did.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.tree import flatten_tensors


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` absorbs ``bn``: w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta."""
    with torch.no_grad():
        std = (bn.running_var + bn.eps).sqrt()
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
        new_bias = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Names of ``(conv, bn)`` children pairs that can be folded."""
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (c_name, conv), (b_name, bn) in zip(children, children[1:]):
            if (
                type(conv) is nn.Conv2d
                and isinstance(bn, nn.BatchNorm2d)
                and bn.num_features == conv.out_channels
                and bn.track_running_stats
            ):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + c_name, prefix + b_name))
    return pairs


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | None = None, atol: float = 1e-4) -> list[tuple[str, str]]:
    """Fold every conv + BN pair of ``model`` in place; BN modules become ``nn.Identity``.

    Returns the folded ``(conv, bn)`` name pairs. With ``example_input``, raises ``RuntimeError``
    when the folded model's output differs from the original one (a BN that is not applied right
    after its conv in ``forward``), naming the pairs so they can be excluded.
    """
    reference = model_outputs(model, example_input) if example_input is not None else None
    pairs = find_conv_bn_pairs(model)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        _fold_pair(modules[conv_name], modules[bn_name])
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
    if reference is not None:
        check_same_outputs(reference, model, example_input, atol, "BatchNorm folding",
                           f"one of the folded pairs {pairs} is not applied as conv -> bn in forward. "
                           f"Set fold_bn=false.")
    return pairs


def check_same_outputs(reference: list[torch.Tensor], model: nn.Module, x: torch.Tensor, atol: float,
                       change: str, cause: str) -> None:
    """Raise ``RuntimeError`` saying that ``change`` changed the model output, by how much, and
    ``cause``, when ``model(x)`` differs from ``reference`` by more than ``atol`` relative to the
    output's scale."""
    pairs = [(a, b) for a, b in zip(reference, model_outputs(model, x)) if a.numel()]  # empty: e.g. no detection
    err = max(((a - b).abs().max().item() for a, b in pairs), default=0.0)
    if err > atol * max(max((a.abs().max().item() for a, _ in pairs), default=0.0), 1.0):
        raise RuntimeError(f"{change} changed the model output (max abs error {err:.3g}): {cause}")


def model_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    return flatten_tensors(out)

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
    when a folded conv does not compute what its conv and BN computed on that input (a BN that is
    not applied right after its conv in ``forward``), naming the pairs so they can be excluded.
    """
    pairs = find_conv_bn_pairs(model)
    recorded = record_pairs(model, example_input, pairs) if example_input is not None else {}
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        _fold_pair(modules[conv_name], modules[bn_name])
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
    check_pairs(model, recorded, atol, "BatchNorm folding", "is not applied as conv -> bn in forward. Set fold_bn=false.")
    return pairs


def keep_first(store: dict, key, value: torch.Tensor) -> None:
    """For forward hooks: keep a copy of ``value`` under ``key`` the first time (a copy, as an
    in-place activation after the module, MobileNet's, changes the tensor). Returns None: a value
    a hook returned would replace the module's input or output."""
    if key not in store:
        store[key] = value.detach().clone()


def record_pairs(model: nn.Module, x, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    """For each ``(first, last)`` pair of modules, the input of ``first`` and the output of
    ``last`` on their first calls while ``model`` runs on ``x`` (pairs never called are left out).

    Checking each pair on its own inputs, rather than the model's output, holds for models whose
    output is post-processed: there a rounding difference can reorder or drop detections."""
    modules = dict(model.named_modules())
    inputs, outputs, hooks = {}, {}, []
    for pair in pairs:
        first, last = modules[pair[0]], modules[pair[1]]
        hooks.append(first.register_forward_pre_hook(lambda m, args, k=pair: keep_first(inputs, k, args[0])))
        hooks.append(last.register_forward_hook(lambda m, args, out, k=pair: keep_first(outputs, k, out)))
    try:
        model_outputs(model, x)
    finally:
        for h in hooks:
            h.remove()
    return {k: (inputs[k], outputs[k]) for k in pairs if k in inputs and k in outputs}


@torch.no_grad()
def check_pairs(model: nn.Module, recorded: dict[tuple[str, str], tuple], atol: float, change: str, cause: str) -> None:
    """Raise ``RuntimeError`` naming the pairs whose ``first`` module (now folded or fused) gives
    on its recorded input more than ``atol`` (relative to the output's scale) away from the
    output recorded at ``last`` before the change."""
    modules = dict(model.named_modules())
    wrong = []
    for (first, last), (x, y) in recorded.items():
        out = modules[first](x)
        if out.shape != y.shape:
            wrong.append(f"{first} -> {last} (shapes {tuple(out.shape)} and {tuple(y.shape)})")
            continue
        err = (out - y).abs().max().item()
        if err > atol * max(y.abs().max().item(), 1.0):
            wrong.append(f"{first} -> {last} (max abs error {err:.3g})")
    if wrong:
        raise RuntimeError(f"{change} changed the model output at {', '.join(wrong[:5])}: the pair {cause}")


def model_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The tensors of ``model(x)`` in eval mode, without gradients; every module's mode comes back."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for m, training in modes.items():
            m.training = training
    return flatten_tensors(out)

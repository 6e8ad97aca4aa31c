"""Fuse conv (+ folded BN) + the activation that follows it into one unit, before quantizing.

A deployed integer kernel runs conv, bias (the folded BN) and activation in one go; quantizing,
measuring sensitivity and searching parameters per such unit matches what runs on the device.
:class:`FusedConv2d` *is* an ``nn.Conv2d`` (same ``weight`` / ``bias``, so state_dict keys do not
change) that applies its activation after the convolution; the activation it took over is
replaced by ``nn.Identity`` in its parent.

As for BN folding there is no graph tracing: a candidate is a ``Conv2d`` child followed, in
registration order, by an activation child of the same parent, possibly with one
``nn.Identity`` (a folded BN) in between. With ``example_input``, activation modules that
``forward`` calls more than once (shared, e.g. after a residual add too) are left alone, and the
fused model's output is checked against the original.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .fold import check_pairs, keep_first, model_outputs, record_pairs

# Element-wise activations without parameters (a PReLU's weight would change the state_dict).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Hardtanh)


class FusedConv2d(nn.Conv2d):
    """``activation(conv(x))`` with the parameters of a plain ``nn.Conv2d``."""

    activation: nn.Module

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: nn.Module) -> "FusedConv2d":
        """Share ``conv``'s weight and bias (no copy)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new.activation = activation
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


def find_conv_act_units(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, activation)`` name pairs that :func:`fuse_activations` would fuse."""
    units = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (c_name, conv) in enumerate(children):
            if type(conv) is not nn.Conv2d:
                continue
            j = i + 1
            if j < len(children) and type(children[j][1]) is nn.Identity:
                j += 1  # the BN that folding replaced
            if j < len(children) and type(children[j][1]) in ACTIVATIONS:
                prefix = f"{parent_name}." if parent_name else ""
                units.append((prefix + c_name, prefix + children[j][0]))
    return units


def _unshare(model: nn.Module, units: list[tuple[str, str]]) -> None:
    """Give every unit its own activation module: one parameter-free activation object set as the
    ``act`` of many parents (Ultralytics' ``Conv.default_act``) is called once by each of them,
    which the call count below would take for one activation applied several times."""
    seen: set[int] = set()
    for _, act_name in units:
        parent_name, _, child = act_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        act = getattr(parent, child)
        if id(act) in seen:
            setattr(parent, child, copy.deepcopy(act))
        seen.add(id(act))


def _called_more_than_once(model: nn.Module, example_input: torch.Tensor, names: set[str]) -> set[str]:
    modules = dict(model.named_modules())
    calls = dict.fromkeys(names, 0)
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in names]
    try:
        model_outputs(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return {n for n, c in calls.items() if c > 1}


def _applied_to_their_conv(model: nn.Module, example_input, units: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The units whose activation, in forward, takes its conv's output: registered after a conv
    is not applied after it (torchvision's SqueezeExcitation registers fc1, fc2, activation and
    applies the activation between fc1 and fc2)."""
    modules = dict(model.named_modules())
    conv_out, act_in, hooks = {}, {}, []
    for unit in units:
        hooks.append(modules[unit[0]].register_forward_hook(lambda m, args, out, k=unit: keep_first(conv_out, k, out)))
        hooks.append(modules[unit[1]].register_forward_pre_hook(lambda m, args, k=unit: keep_first(act_in, k, args[0])))
    try:
        model_outputs(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return [u for u in units if u in conv_out and u in act_in and conv_out[u].shape == act_in[u].shape
            and torch.equal(conv_out[u], act_in[u])]


def fuse_activations(model: nn.Module, example_input: torch.Tensor | None = None,
                     atol: float = 1e-5) -> list[tuple[str, str]]:
    """Fuse every conv + activation unit of ``model`` in place (after BN folding); returns the
    fused ``(conv, activation)`` name pairs. Raises ``RuntimeError`` when ``example_input`` shows
    that fusing changed the output."""
    units = find_conv_act_units(model)
    _unshare(model, units)
    if example_input is not None:
        shared = _called_more_than_once(model, example_input, {a for _, a in units})
        units = _applied_to_their_conv(model, example_input, [(c, a) for c, a in units if a not in shared])
    recorded = record_pairs(model, example_input, units) if example_input is not None else {}
    modules = dict(model.named_modules())
    for conv_name, act_name in units:
        for name, new in ((conv_name, FusedConv2d.from_conv(modules[conv_name], modules[act_name])),
                          (act_name, nn.Identity())):
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, new)
    check_pairs(model, recorded, atol, "fusing activations",
                "is not applied as conv -> activation in forward. Set quant.fuse_act=false.")
    return units

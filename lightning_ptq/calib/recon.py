"""Block reconstruction (BRECQ / QDrop style): the peer toolkits' way of learning quantizers.

Instead of one loss on the network's output, the quantized network is calibrated block by block
in forward order. For each block, its output with quantization switched off (on float inputs)
is the target and the quantized model's own input to it (earlier blocks already quantized and
reconstructed) is the input; the block's learnable quantizer parameters are fitted to minimise
the mean squared error between the two. As in QDrop, while a block is being fitted each of its
activation quantizers is bypassed element-wise with probability ``drop_prob``, which makes the
result flatter and generalise better beyond the calibration images.

Blocks are found automatically (:func:`find_blocks`): the largest modules holding at most
``max_layers`` quantized layers. A module that is called several times per forward (a head
shared across pyramid levels) is one block fitted on all of its calls.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core import distributed
from ..core.io import atomic_torch_save
from ..core.tree import flatten_tensors
from ..quant.layers import QuantLayerMixin
from ..quant.quantizer import quantization_disabled
from ..quant.swap import quantizer_parameters
from .module import cosine_schedule, weight_groups
from .observe import ForwardFn, default_forward


def _num_quant_layers(module: nn.Module) -> int:
    return sum(isinstance(m, QuantLayerMixin) for m in module.modules())


def find_blocks(qmodel: nn.Module, max_layers: int = 4) -> list[str]:
    """Names of the reconstruction blocks of ``qmodel``: going down from the root, a module with
    at most ``max_layers`` quantized layers (or a quantized layer itself) is a block; a larger one,
    or a ModuleList / ModuleDict (which has no forward of its own), is split into its children.
    Blocks are returned in module order; :func:`reconstruct` fits them in the order the forward
    pass calls them."""
    if max_layers < 1:
        raise ValueError(f"max_layers={max_layers!r} must be >= 1.")
    blocks: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        count = _num_quant_layers(module)
        if count == 0:
            return
        callable_block = not isinstance(module, (nn.ModuleList, nn.ModuleDict))  # containers have no forward
        if callable_block and (count <= max_layers or isinstance(module, QuantLayerMixin)):
            blocks.append(name)
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", qmodel)
    if blocks == [""]:  # the whole model is one block: name it by its children instead
        blocks = [n for n, c in qmodel.named_children() if _num_quant_layers(c)]
    return blocks


def _call_order(qmodel: nn.Module, blocks: Sequence[str], batch, forward_fn: ForwardFn) -> list[str]:
    """``blocks`` sorted by when the forward pass first calls them."""
    order: list[str] = []
    handles = [qmodel.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: order.append(name) if name not in order else None) for name in blocks]
    try:
        with torch.no_grad():
            forward_fn(qmodel, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [b for b in blocks if b not in order]
    if missing:
        raise ValueError(f"blocks {missing} are never called by the model's forward; they cannot be reconstructed.")
    return order


def _snapshot(obj):
    """``obj`` with every tensor detached and every list / tuple / dict copied: some modules
    extend their input list in place (torchvision's LastLevelP6P7), which must not change what
    was recorded, nor grow it at every fitting step."""
    if torch.is_tensor(obj):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    return obj


@contextmanager
def _float_mode(qmodel: nn.Module):
    """``qmodel`` with every quantizer passing values through: the float network with folded BN,
    the reference each block is fitted to (the float model's own modules would be wrong where
    a conv was folded with a BN that lies outside the block)."""
    with quantization_disabled(qmodel):
        yield qmodel


@torch.no_grad()
def _capture(qmodel: nn.Module, name: str, batches: Sequence, forward_fn: ForwardFn,
             reference: nn.Module | None = None) -> list[tuple[tuple, object]]:
    """Per call of block ``name`` over ``batches``: (the quantized model's input args to it, the
    float network's output of it), both detached. The float network is ``reference`` (default:
    ``qmodel`` itself) with its quantizers switched off."""
    reference = qmodel if reference is None else reference
    q_inputs, fp_outputs = [], []
    handle = reference.get_submodule(name).register_forward_hook(
        lambda m, args, out: fp_outputs.append(_snapshot(out)))
    try:
        with _float_mode(reference):
            for batch in batches:
                forward_fn(reference, batch)
    finally:
        handle.remove()
    block = qmodel.get_submodule(name)
    handle = block.register_forward_pre_hook(lambda m, args: q_inputs.append(_snapshot(args)))
    try:
        for batch in batches:
            forward_fn(qmodel, batch)
    finally:
        handle.remove()
    return list(zip(q_inputs, fp_outputs))


def qdrop_hooks(model: nn.Module, drop_prob: float) -> list:
    """QDrop: each activation quantizer of ``model`` passes the float value through instead of
    the quantized one, element by element, with probability ``drop_prob``, until the returned
    hook handles are removed."""
    def hook(module, args, out):
        return torch.where(torch.rand_like(out) < drop_prob, args[0], out)
    return [m.input_quant.register_forward_hook(hook) for m in model.modules() if isinstance(m, QuantLayerMixin)]


def _fit_block(block: nn.Module, groups: list[dict], samples: list, steps: int,
               drop_prob: float, generator: torch.Generator) -> float:
    if not any(group["params"] for group in groups):
        return float("nan")
    opt = torch.optim.Adam(groups)
    sched = cosine_schedule(opt, steps)
    hooks = qdrop_hooks(block, drop_prob) if drop_prob > 0 else []
    loss = torch.tensor(float("nan"))
    try:
        for _ in range(steps):
            args, target = samples[int(torch.randint(len(samples), (1,), generator=generator))]
            outs, targets = flatten_tensors(block(*_snapshot(args))), flatten_tensors(target)
            loss = torch.stack([(o - t).pow(2).mean() for o, t in zip(outs, targets)]).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"reconstruction loss is {loss.item()}; lower the learning rate.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(p for group in groups for p in group["params"])
            opt.step()
            sched.step()
    finally:
        for h in hooks:
            h.remove()
    return loss.item()


def reconstruct(
    qmodel: nn.Module,
    batches: Iterable,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    weight_lr: float = 0.0,
    drop_prob: float = 0.5,
    blocks: Sequence[str] | None = None,
    max_layers: int = 4,
    forward_fn: ForwardFn = default_forward,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Fit the quantizer parameters of ``qmodel`` (ranges already initialised) block by block, each
    block's output to that of the same block with quantization switched off.

    Each block gets ``steps`` Adam steps (cosine-decayed ``lr``) on one recorded call at a time,
    so the total work is about that of ``steps`` full forward-backward passes. With
    ``weight_lr > 0`` the block's weights and biases are fitted too (AdaQuant), at that many steps
    of each layer's weight grid (as in :class:`~lightning_ptq.calib.module.CalibrationModule`). With
    ``checkpoint_dir``, the quantized model's state is saved after every block
    (``recon_state.pt``, by rank 0) and an interrupted run continues with the next block. Under
    ``torch.distributed`` each rank fits on its own batches and the gradients are averaged over
    the ranks, so that every rank ends with the same parameters.
    Returns the final reconstruction loss per block (on this rank's batches).
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob={drop_prob!r} must lie in [0, 1).")
    if steps < 1 or lr <= 0:
        raise ValueError(f"steps={steps!r} must be >= 1 and lr={lr!r} > 0.")
    if weight_lr < 0:
        raise ValueError(f"weight_lr={weight_lr!r} must be >= 0 (0: weights stay fixed).")
    batches = list(batches)
    if not batches:
        raise ValueError("reconstruct: the calibration set is empty.")
    blocks = list(blocks) if blocks is not None else find_blocks(qmodel, max_layers)
    order = _call_order(qmodel, blocks, batches[0], forward_fn)

    # The float reference is the quantized model with its quantizers off; once blocks' weights are
    # tuned that no longer is the float network, so then it is a copy taken before any fitting.
    reference = copy.deepcopy(qmodel) if weight_lr > 0 else qmodel
    state_path = Path(checkpoint_dir) / "recon_state.pt" if checkpoint_dir else None
    losses: dict[str, float] = {}
    if state_path is not None and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        qmodel.load_state_dict(saved["state_dict"])
        losses = dict(saved["losses"])

    qmodel.eval()
    # Learnable is what the quantizers were built with (QuantConfig.learnable); fit one block's at a time.
    block_groups = {name: [{"params": quantizer_parameters(qmodel.get_submodule(name)), "lr": lr},
                           *weight_groups(qmodel.get_submodule(name), weight_lr)] for name in order}
    requires_grad = {p: p.requires_grad for p in qmodel.parameters()}
    qmodel.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    try:
        for name in tqdm(order, desc="reconstructing blocks", disable=not progress, leave=False):
            if name in losses:
                continue
            params = [p for group in block_groups[name] for p in group["params"]]
            for p in params:
                p.requires_grad_(True)
            samples = _capture(qmodel, name, batches, forward_fn, reference)
            try:
                losses[name] = _fit_block(qmodel.get_submodule(name), block_groups[name], samples, steps,
                                          drop_prob, generator)
            except FloatingPointError as err:
                raise FloatingPointError(f"block {name!r}: {err}") from err
            for p in params:
                p.requires_grad_(False)
            if state_path is not None and distributed.rank() == 0:
                atomic_torch_save({"state_dict": qmodel.state_dict(), "losses": losses}, state_path)
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
    return losses

"""Calibration on several processes (Lightning's DDP): start them, give each its share of every
calibration batch, and agree on every number that decides something.

The job starts its processes with Lightning Fabric's launcher, the one Lightning's Trainer uses:
``trainer.strategy=ddp trainer.devices=N`` re-runs the same command once per extra device
(Hydra's run folder shared), and under torchrun or SLURM (``trainer.num_nodes``) the processes
already exist and only join. Everything here is a no-op in a single process.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch import distributed as dist

from .errors import ConfigError, UserError
from .tree import batch_size

# Settings that say how many processes run; pretraining uses one process.
PROCESS_SETTINGS = ("strategy", "devices", "num_nodes")


class TooFewImagesError(UserError, ValueError):
    """A calibration batch holds fewer images than there are processes: some rank would get none of it."""


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def _device() -> torch.device:
    """Where tensors for a collective must live: NCCL reduces only CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def one_process(trainer: Mapping) -> dict:
    """``trainer`` settings for work that runs in one process (pretraining the default model): the
    strategy and node count left out, one device."""
    settings = {k: v for k, v in trainer.items() if k not in PROCESS_SETTINGS}
    if "devices" in trainer:
        settings["devices"] = 1
    return settings


def launch(trainer: Mapping, in_sweep: bool = False) -> int:
    """Start (or join) the processes that ``trainer`` (``accelerator``, ``devices``,
    ``num_nodes``, ``strategy``) asks for and set up their process group; returns how many there
    are (1: nothing was started). Call it where every process has reached the same point: the
    extra processes re-run the command from its start. ``in_sweep``: the command is a Hydra
    sweep, whose jobs cannot each start processes (a ConfigError when more than one is asked for)."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    settings = {k: trainer[k] for k in ("accelerator", "devices", "num_nodes", "strategy") if k in trainer}
    fabric = Fabric(**settings)
    if fabric.world_size == 1:
        return 1
    if in_sweep:
        raise ConfigError(
            f"trainer.devices={trainer.get('devices')!r} x trainer.num_nodes={trainer.get('num_nodes', 1)!r} processes in "
            f"a sweep (-m): a sweep runs its jobs one after the other in one process, and a job cannot start processes "
            f"of its own there. Run each setting as its own command (without -m) to calibrate on several processes.")
    if not isinstance(fabric.strategy, DDPStrategy) or getattr(fabric.strategy, "_start_method", "popen") != "popen":
        raise ConfigError(
            f"trainer.strategy={trainer.get('strategy')!r} with {fabric.world_size} processes: the job runs on several "
            f"processes only with trainer.strategy=ddp (one process per device, each running the command; torchrun "
            f"and SLURM launches too). Spawned or forked processes cannot run the job.")
    fabric.launch()
    return fabric.world_size


def finish() -> None:
    """End the process group (what follows runs in each process on its own)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(batches: Sequence, what: str = "calibration batches") -> list:
    """This rank's share of ``batches``: of every batch, every ``world_size``-th image from its
    rank on (and their targets), so that the ranks together see each batch as one process does,
    each in a fraction of the time. A batch is a tensor, or a tuple / list / dict whose
    per-image members (tensors and lists as long as the batch) are split alike; other members are
    kept whole. Calibration reads only the images; the targets travel along (a per-box member that
    happens to be as long as the batch is split too, which calibration never notices)."""
    world = world_size()
    if world == 1:
        return list(batches)
    smallest = min((batch_size(b) for b in batches), default=0)
    if smallest < world:
        raise TooFewImagesError(
            f"{what}: a batch of {smallest} image(s) for {world} processes, and every process needs one image of "
            f"every batch at least. Use larger batches (calib.batch_size) or fewer processes (trainer.devices / "
            f"trainer.num_nodes).")
    return [_part(b, batch_size(b), rank(), world) for b in batches]


def _part(obj, size: int, index: int, parts: int):
    """``obj`` with each member of length ``size`` cut to its ``index``-th of ``parts`` strided share."""
    if torch.is_tensor(obj) and obj.dim() and obj.shape[0] == size:
        return obj[index::parts]
    if isinstance(obj, dict):
        return {k: _part(v, size, index, parts) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_part(o, size, index, parts) for o in obj)
    if isinstance(obj, list):
        return obj[index::parts] if len(obj) == size else [_part(o, size, index, parts) for o in obj]
    return obj


def mean_over_ranks(total: float, count: int) -> float:
    """``sum(total) / sum(count)`` over every rank (``total / count`` in one process)."""
    if not active():
        return total / count
    both = torch.tensor([total, float(count)], dtype=torch.float64, device=_device())
    dist.all_reduce(both)
    return float(both[0] / both[1])


def sum_over_ranks(count: int) -> int:
    """``count`` summed over every rank (itself in one process)."""
    if not active():
        return count
    total = torch.tensor(count, dtype=torch.int64, device=_device())
    dist.all_reduce(total)
    return int(total)


def spread(count: int, fn: Callable[[int], float]) -> list[float]:
    """``[fn(0), ..., fn(count - 1)]`` with the ranks taking turns: rank ``r`` computes the
    ``i`` with ``i % world_size == r`` and every rank gets every value (a value is exact: each
    entry is summed with zeros). Every rank must call it with the same ``count``."""
    values = torch.zeros(count, dtype=torch.float64)
    for i in range(rank(), count, world_size()):
        values[i] = fn(i)
    if active():
        values = values.to(_device())
        dist.all_reduce(values)
    return values.cpu().tolist()


def from_rank_zero(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` as rank 0 holds them, on every rank (each rank must hold the same names and
    shapes; the values may differ, e.g. random subsamples)."""
    if not active():
        return dict(tensors)
    out = {}
    for name, value in tensors.items():
        shared = value.detach().to(_device(), copy=True).contiguous()
        dist.broadcast(shared, src=0)
        out[name] = shared.to(value.device)
    return out


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace every gradient by its mean over the ranks (what DDP does for a Lightning module),
    for the loops that are not one."""
    if not active():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


@torch.no_grad()
def difference_from_rank_zero(module: nn.Module) -> float:
    """The largest absolute difference between this rank's floating-point state (parameters and
    buffers) and rank 0's, reduced to its maximum over the ranks (0.0: identical everywhere)."""
    if not active():
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=_device())
    for value in module.state_dict().values():
        if not torch.is_floating_point(value) or value.numel() == 0:
            continue
        theirs = value.detach().to(worst.device, copy=True)
        dist.broadcast(theirs, src=0)
        worst = torch.maximum(worst, (value.detach().to(worst.device) - theirs).abs().max().double())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)

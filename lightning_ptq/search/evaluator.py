"""How the search measures the validation metric, and how it avoids recomputing what it knows.

The search evaluates the model hundreds of times, each time after changing one layer. An
evaluator answers ``evaluator(model, changed=name)``; the search tells it, with
``reset(model)``, the state it will keep returning to, and with ``commit(model, name)`` that a
change to ``name`` is now part of that state.

Each call and each ``reset`` is one evaluation of the metric; ``commit`` only maintains the cache.

* :class:`FunctionEvaluator` wraps any ``fn(model) -> float`` (mAP of a detector, the user's
  Lightning validation loop): every call is a full evaluation.
* :class:`StagedEvaluator`, for a model that is an ``nn.Sequential`` of stages (the embedded
  classifier), keeps the validation batches in memory and caches the input of every stage for
  the base state. A change inside stage ``k`` leaves stages ``0..k-1`` as they were, so
  evaluating it runs only stages ``k..end`` from the cached input; ``commit`` refreshes the
  cache from stage ``k`` on. For a sensitivity probe (one layer quantized, all others float)
  the cached inputs are the FP activations.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.tree import batch_inputs

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` [N, C] against integer ``labels`` [N]."""
    return (logits.argmax(dim=1) == labels).float().mean().item()


class FunctionEvaluator:
    """A full evaluation per call: ``fn(model) -> float`` (higher is better unless the search's
    ``mode`` says ``min``)."""

    def __init__(self, fn: Callable[[nn.Module], float]) -> None:
        self.fn = fn

    def reset(self, model: nn.Module) -> float:
        return self(model)

    def __call__(self, model: nn.Module, changed: str | None = None) -> float:
        return float(self.fn(model))

    def commit(self, model: nn.Module, changed: str) -> None:
        pass


class StagedEvaluator:
    """Cached-prefix evaluation of an ``nn.Sequential`` model on fixed batches.

    Args:
        batches: ``(inputs, targets)`` pairs; kept in memory.
        metric: ``metric(outputs, targets) -> float`` on the concatenated outputs and targets.
    """

    def __init__(self, batches: Sequence, metric: Metric = accuracy) -> None:
        self.inputs = [batch_inputs(b) for b in batches]
        if not self.inputs:
            raise ValueError("the validation set is empty: the search needs at least one batch to evaluate on.")
        self.targets = torch.cat([b[1] for b in batches])
        self.metric = metric
        self._stage_inputs: list[list[torch.Tensor]] = []  # [stage][batch], for the base state
        self._names: list[str] = []

    def _stage_of(self, model: nn.Module, name: str | None) -> int:
        if name is None:
            return 0
        top = name.split(".")[0]
        if top not in self._names:
            raise KeyError(f"layer {name!r} is not inside a top-level stage of the model ({self._names}).")
        return self._names.index(top)

    @torch.no_grad()
    def _run(self, model: nn.Module, start: int, store: bool) -> torch.Tensor:
        stages = list(model.children())
        outputs = []
        for b in range(len(self.inputs)):
            x = self._stage_inputs[start][b]
            for k in range(start, len(stages)):
                if store and k > start:
                    self._stage_inputs[k][b] = x
                x = stages[k](x)
            outputs.append(x)
        return torch.cat(outputs)

    def reset(self, model: nn.Module) -> float:
        """Cache the stage inputs of ``model`` as it is now (the base state); returns its metric."""
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"StagedEvaluator needs an nn.Sequential model, got {type(model).__name__}; "
                            f"use FunctionEvaluator for other models.")
        model.eval()
        self._names = [n for n, _ in model.named_children()]
        self._stage_inputs = [list(self.inputs)] + [[None] * len(self.inputs) for _ in self._names[1:]]
        return self.metric(self._run(model, 0, store=True), self.targets)

    def __call__(self, model: nn.Module, changed: str | None = None) -> float:
        return self.metric(self._run(model, self._stage_of(model, changed), store=False), self.targets)

    def commit(self, model: nn.Module, changed: str) -> None:
        """``changed`` is now part of the base state: refresh the cached inputs after its stage."""
        self._run(model, self._stage_of(model, changed), store=True)

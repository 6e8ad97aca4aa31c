"""Feature matching, the local term of Reg-PTQ's calibration loss.

Reg-PTQ calibrates with ``L = L_H + L_G``: ``L_G`` is the global loss on the detector's outputs
(:class:`~lightning_ptq.calib.fgl.FilteredGlobalLoss`), ``L_H`` a local reconstruction error of
intermediate features. A loss on the outputs alone reaches the backbone only through every later
layer, and 4-bit activations in the backbone are where most of the accuracy goes; matching the
student's features to the teacher's at a few points (the backbone stages, the neck outputs)
gives those layers a direct signal.

:class:`FeatureMatching` wraps any global loss ``(student_out, teacher_out) -> (loss, parts)`` and
adds ``weight`` x the mean, over the chosen modules, of the squared error between the student's
and the teacher's output of that module, divided by the teacher's variance there (so that every
point weighs the same whatever its scale). With ``fisher=True`` each element's error is weighted,
as in the published method (and BRECQ), by the squared gradient of the global loss with respect to
that feature (a diagonal Fisher approximation of how much the error there costs at the output),
normalised to mean 1 per module; it is taken at the current student in every step, which costs
one more backward pass. With ``fisher=False`` every element weighs the same.

Module outputs are captured by forward hooks that exist only while calibration runs
(:meth:`FeatureMatching.attach` / :meth:`~FeatureMatching.detach`, called by the calibration
LightningModule at the start and end of fitting), so evaluation afterwards is untouched.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.tree import flatten_tensors
from .config import FeaturesConfig


def match_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the modules of ``model`` that the fnmatch ``patterns`` select, in module order;
    a pattern that selects nothing is an error that lists the top-level module names."""
    names = [n for n, _ in model.named_modules() if n]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            top = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"calib.features.modules: pattern {pattern!r} matches no module of "
                              f"{type(model).__name__} (its top-level modules: {top}).")
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


class FeatureMatching:
    """``base`` plus ``weight`` x the normalised feature MSE at the ``modules`` (patterns on module
    names, the same names in the teacher and the quantized student)."""

    def __init__(self, base, modules: list[str], weight: float = 1.0, fisher: bool = False):
        config = FeaturesConfig(list(modules), weight, fisher)
        if not config.modules:
            raise ConfigError("calib.features.modules is empty and the model names no feature_modules: name the "
                              "modules whose outputs to match (e.g. [stage3, stage4, stage5]) or set "
                              "calib.features.weight=0.")
        self.base, self.patterns, self.weight, self.fisher = base, config.modules, float(weight), bool(fisher)
        self.name = f"{getattr(base, 'name', 'loss')}+features"
        self.names: list[str] = []  # the matched module names, set by attach
        self._handles: list = []
        self._teacher: dict[str, list[torch.Tensor]] = {}
        self._student: dict[str, list[torch.Tensor]] = {}

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        """Start capturing the chosen modules' outputs of both models."""
        self.detach()
        names = match_modules(teacher, self.patterns)
        missing = [n for n in names if n not in dict(student.named_modules())]
        if missing:
            raise ConfigError(f"calib.features.modules: {missing} exist in the float model but not in the quantized one.")
        self.names = names
        for model, store in ((teacher, self._teacher), (student, self._student)):
            for name in names:
                store[name] = []
                hook = lambda m, args, out, bucket=store[name]: bucket.extend(flatten_tensors(out))  # noqa: E731
                self._handles.append(model.get_submodule(name).register_forward_hook(hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._teacher, self._student = {}, {}

    def __call__(self, student_out, teacher_out) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = self.base(student_out, teacher_out)
        if not self._handles:
            raise RuntimeError("FeatureMatching was called before attach(teacher, student).")
        pairs = []
        for name in self.names:
            s_feats, t_feats = self._student[name], self._teacher[name]
            if len(s_feats) != len(t_feats) or not s_feats:
                raise RuntimeError(f"module {name!r} gave {len(s_feats)} student and {len(t_feats)} teacher "
                                   f"outputs in this step; both models must call it, and equally often.")
            pairs += zip(list(s_feats), list(t_feats))
            s_feats.clear()
            t_feats.clear()
        weights = self._fisher_weights(loss, [s for s, _ in pairs]) if self.fisher else [None] * len(pairs)
        terms = [_normalised_error(s, t, w) for (s, t), w in zip(pairs, weights)]
        local = torch.stack(terms).mean()
        return loss + self.weight * local, {**parts, "global": loss.item(), "features": local.item()}

    @staticmethod
    def _fisher_weights(loss: torch.Tensor, feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Squared gradient of the global ``loss`` at each feature, mean 1 per feature (``None``:
        uniform, where the loss does not depend on the feature or its gradient is 0)."""
        if not loss.requires_grad:
            return [None] * len(feats)
        grads = torch.autograd.grad(loss, feats, retain_graph=True, allow_unused=True)
        weights = []
        for g in grads:
            sq = None if g is None else g.detach().float().pow(2)
            weights.append(sq / sq.mean() if sq is not None and sq.mean() > 0 else None)
        return weights


def _normalised_error(s: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean (weighted) squared error between ``s`` and ``t``, divided by the variance of ``t``."""
    err = (s.float() - t.float()).pow(2)
    if weight is not None:
        err = err * weight
    return err.mean() / t.float().var().clamp_min(1e-8)

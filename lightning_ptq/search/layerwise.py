"""Accuracy-driven per-layer search of quantization parameters.

Starting from a quantized and calibrated model (every layer has its first parameters):

1. **sensitivity**: each quantized layer alone is quantized, all others float, and the drop of
   the validation metric from the float model is measured; layers whose drop exceeds
   ``threshold`` are the targets, most sensitive first;
2. **search**, per target layer, on the fully quantized model: other activation ranges, other
   weight ranges (both at the same bits), then more bits, then float as the last resort; each
   candidate is applied and the validation metric measured, the best is kept. A layer is done
   when its metric comes within ``tolerance`` of what the model reaches with that layer in
   float; the search ends when the metric reaches the goal (``target``, or ``max_drop``
   relative to float) or a try budget is spent.

The evaluator (:mod:`~lightning_ptq.search.evaluator`) decides what one evaluation costs;
nothing here assumes a task. Under DDP (every rank calling with the same model and data) the
ranks share the evaluations: the sensitivities, and each round of as many candidates as there
are ranks, taken in order as one process takes them, so every rank ends with the search one
process makes. Test data never enters: report the test metric of the result
next to the validation one to see how much the search fitted its validation set.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calib.observe import ForwardFn, default_forward
from ..core import distributed
from ..quant.laq import LogAffineQuantizer
from ..quant.observer import SampleObserver
from ..quant.quantizer import QuantizerBase, quantization_disabled
from ..quant.swap import quantized_layers, set_submodule
from .candidates import Candidate, build_quantizer, candidates_for
from .config import SearchConfig
from .evaluator import FunctionEvaluator

log = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    """One quantized layer in the search report."""

    name: str
    sensitivity: float          # metric drop with only this layer quantized (positive: worse)
    target: bool = False
    first: str = ""             # the calibrated parameters it started with
    chosen: str = "first"       # what the search kept
    w_bits: int | None = None   # None: float
    a_bits: int | None = None
    weight_count: int = 0
    metric_float: float | None = None   # validation metric with this layer in float (targets)
    metric_after: float | None = None   # validation metric after this layer was searched
    tries: int = 0


@dataclass
class SearchResult:
    fp_metric: float
    start_metric: float
    final_metric: float
    goal: float
    reached: bool
    layers: list[LayerRecord] = field(default_factory=list)
    evaluations: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def float_layers(self) -> list[str]:
        return [r.name for r in self.layers if r.w_bits is None]

    def average_bits(self) -> dict[str, float]:
        """Weight bits averaged over the weights (float layers count 32), activation bits over
        the layers."""
        total = sum(r.weight_count for r in self.layers)
        w = sum((r.w_bits or 32) * r.weight_count for r in self.layers) / max(total, 1)
        a = sum(r.a_bits or 32 for r in self.layers) / max(len(self.layers), 1)
        return {"avg_w_bits": w, "avg_a_bits": a}

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "layers"}, **self.average_bits(),
                "float_layers": self.float_layers, "layers": [asdict(r) for r in self.layers]}


def _describe(q: QuantizerBase) -> str:
    method = "laq" if isinstance(q, LogAffineQuantizer) else q.init
    return f"{method}@{q.bits}b"


def _set_active(layers: dict, active: set[str]) -> None:
    for name, layer in layers.items():
        for q in layer.quantizers:
            if name in active:
                q.enable()
            else:
                q.disable()


@torch.no_grad()
def _observe_inputs(model: nn.Module, layers: dict, batches: Iterable, forward_fn: ForwardFn,
                    max_samples: int) -> dict[str, torch.Tensor]:
    """Input values of ``layers`` over the calibration batches, in the model's current state,
    as ``[C, N]`` rows laid out like each layer's input quantizer."""
    observers, hooks = {}, []
    for name, layer in layers.items():
        obs = SampleObserver(layer.input_quant.channel_axis, max_samples)
        observers[name] = obs
        hooks.append(layer.register_forward_pre_hook(lambda m, args, obs=obs: obs(args[0])))
    try:
        for batch in batches:
            forward_fn(model, batch)
    finally:
        for h in hooks:
            h.remove()
    # the observers subsample at random: under DDP every rank takes rank 0's rows
    return distributed.from_rank_zero({name: obs.rows() for name, obs in observers.items()})


class _Budget:
    """Evaluates candidates and counts the evaluations against the per-layer and total limits.

    Under DDP the ranks share each round of candidates (:func:`~lightning_ptq.core.distributed.spread`);
    a round is replayed in order as one process would have tried it, so the decisions, and the
    counts that decide when to stop, are those of one process. Evaluations a round made that the
    replay did not reach are counted apart (``discarded``)."""

    def __init__(self, evaluate, sign: float, total: int) -> None:
        self.evaluate, self.sign, self.total = evaluate, sign, total
        self.used = self.layer_used = self.discarded = 0

    def scores(self, model, trials: list[tuple[str | None, Callable[[], None]]]) -> list[float]:
        """The signed metric after each of ``trials``, ``(changed layer, a function that puts the
        candidate in place)``; not counted."""
        def run(i: int) -> float:
            changed, apply = trials[i]
            apply()
            return float(self.evaluate(model, changed))

        values = distributed.spread(len(trials), run)
        for value, (changed, _) in zip(values, trials):
            if not math.isfinite(value):
                raise FloatingPointError(f"the validation metric is {value} after changing layer {changed!r}: check "
                                         f"the evaluator and the model's outputs on the validation set.")
        return [self.sign * v for v in values]

    def score(self, model, changed) -> float:
        """The signed metric of the model as it is, counted as one evaluation."""
        self.spend(1)
        return self.scores(model, [(changed, lambda: None)])[0]

    def spend(self, count: int) -> None:
        self.used += count
        self.layer_used += count

    def room(self, per_layer: int) -> int:
        """How many more evaluations the limits allow for this layer."""
        return max(min(self.total - self.used, per_layer - self.layer_used), 0)

    def left(self, per_layer: int) -> bool:
        return self.room(per_layer) > 0


def search_layers(
    qmodel: nn.Module,
    calib_batches: Iterable,
    evaluator,
    config: SearchConfig | None = None,
    forward_fn: ForwardFn = default_forward,
    progress: bool = True,
) -> SearchResult:
    """Search per-layer parameters of the calibrated ``qmodel`` in place; returns the report.

    ``evaluator`` measures the validation metric (see :mod:`~lightning_ptq.search.evaluator`;
    a plain ``fn(model) -> float`` is wrapped). ``calib_batches`` (the calibration set) give the
    input values the range candidates are computed from.
    """
    cfg = config or SearchConfig()
    if not hasattr(evaluator, "reset"):
        evaluator = FunctionEvaluator(evaluator)
    layers = quantized_layers(qmodel)
    if not layers:
        raise ValueError("search_layers: the model has no quantized layer; quantize and calibrate it first.")
    uncalibrated = [n for n, layer in layers.items() if not all(q.initialized for q in layer.quantizers)]
    if uncalibrated:
        raise ValueError(f"search_layers: layers {uncalibrated[:5]} are not calibrated; run calibrate() first.")
    sign = 1.0 if cfg.mode == "max" else -1.0
    was_training = qmodel.training
    qmodel.eval()
    try:
        return _search(qmodel, layers, calib_batches, evaluator, cfg, sign, forward_fn, progress)
    finally:  # whatever happened, every remaining quantized layer quantizes again
        _set_active(quantized_layers(qmodel), set(quantized_layers(qmodel)))
        qmodel.train(was_training)


def _search(qmodel, layers: dict, calib_batches, evaluator, cfg: SearchConfig, sign: float, forward_fn,
            progress: bool) -> SearchResult:
    budget = _Budget(evaluator, sign, cfg.max_evaluations)

    # 1. sensitivity: one layer quantized at a time; the base state (cached by the evaluator) is float
    start = time.perf_counter()
    _set_active(layers, set())
    fp_score = sign * evaluator.reset(qmodel)
    names = list(layers)
    bar = tqdm(total=len(range(distributed.rank(), len(names), distributed.world_size())), desc="sensitivity",
               disable=not progress, leave=False)

    def quantize_only(name: str):
        def apply() -> None:
            _set_active(layers, {name})
            bar.update()
        return name, apply

    probes = budget.scores(qmodel, [quantize_only(name) for name in names])
    bar.close()
    records = {
        name: LayerRecord(name, sensitivity=fp_score - probe, first=f"w:{_describe(layer.weight_quant)} "
                          f"a:{_describe(layer.input_quant)}", w_bits=layer.weight_quant.bits,
                          a_bits=layer.input_quant.bits, weight_count=layer.weight.numel())
        for (name, layer), probe in zip(layers.items(), probes)}
    sensitivity_evals, sensitivity_seconds = len(names) + 1, time.perf_counter() - start

    # 2. search on the fully quantized model, most sensitive target first
    start = time.perf_counter()
    _set_active(layers, set(layers))
    score = sign * evaluator.reset(qmodel)
    start_score = score
    if cfg.target is not None:
        goal = sign * cfg.target
    else:
        goal = fp_score - abs(fp_score) * cfg.max_drop
    targets = sorted((r for r in records.values() if r.sensitivity >= cfg.threshold), key=lambda r: -r.sensitivity)
    targets = targets[: cfg.max_targets] if cfg.max_targets else targets
    for r in targets:
        r.target = True
    rows = _observe_inputs(qmodel, {r.name: layers[r.name] for r in targets}, calib_batches, forward_fn,
                           cfg.act_samples) if targets and score < goal else {}
    for r in tqdm(targets, desc="search", disable=not progress, leave=False):
        if score >= goal or budget.used >= cfg.max_evaluations:
            break
        budget.layer_used = 0
        score = _search_layer(qmodel, layers[r.name], r, rows[r.name], score, budget, evaluator, cfg)
        r.metric_after = sign * score

    result = SearchResult(
        fp_metric=sign * fp_score, start_metric=sign * start_score, final_metric=sign * score, goal=sign * goal,
        reached=score >= goal, layers=list(records.values()),
        evaluations={"sensitivity": sensitivity_evals, "search": budget.used + 1, "discarded": budget.discarded},
        seconds={"sensitivity": sensitivity_seconds, "search": time.perf_counter() - start},
    )
    if not result.reached:
        log.warning(
            "the search did not reach its goal (validation metric %.4f, goal %.4f) within its budget (%d targets, "
            "%d evaluations); the best found is kept (start %.4f).", result.final_metric, result.goal, len(targets),
            budget.used, result.start_metric)
    return result


def _search_layer(model, layer, record: LayerRecord, rows: torch.Tensor, score: float, budget: _Budget,
                  evaluator, cfg: SearchConfig) -> float:
    """Search one layer from the current ``score``; leaves the best parameters in place, commits
    them to the evaluator and returns the new score.

    A candidate replaces the best so far only when it gains more than ``tolerance``, so noise in
    the validation metric neither costs bits nor fits the validation set."""
    name = record.name
    old = {"weight": layer.weight_quant, "input": layer.input_quant}
    with quantization_disabled(old.values()):  # the layer in float: the most its search can hope for
        float_score = budget.score(model, name)
    record.metric_float = budget.sign * float_score
    layer_goal = float_score - cfg.tolerance
    best = {"score": score, "weight": old["weight"], "input": old["input"], "weight_method": "first",
            "input_method": "first"}
    sources = {"weight": old["weight"].channel_rows(layer.weight.detach()).float(), "input": rows}

    def quantizer_for(side: str, method: str, bits: int | None):
        """(quantizer, method) of one side; ``best`` at unchanged bits reuses the best quantizer."""
        bits = bits or best[side].bits
        if method == "best" and bits == best[side].bits:
            return best[side], best[f"{side}_method"]
        method = best[f"{side}_method"] if method == "best" else method
        built = "laq" if isinstance(old[side], LogAffineQuantizer) else old[side].init
        return build_quantizer(old[side], built if method == "first" else method, bits, sources[side]), method

    def try_round(candidates: list[Candidate], stop: Callable[[], bool]) -> int:
        """Evaluate the next candidates (as many as there are ranks, within the budget) at once,
        then take them in order as one process would: a candidate replaces the best when it gains
        more than ``tolerance``. Returns how many were taken; the rest of the round is discarded
        when ``stop()`` holds, or when a change of the best alters what a later candidate would
        have been (one built on the best of the side that changed)."""
        batch = candidates[:min(distributed.world_size(), budget.room(cfg.max_tries_per_layer))]
        built = [(quantizer_for("weight", c.w, c.w_bits), quantizer_for("input", c.a, c.a_bits)) for c in batch]

        def put(w: QuantizerBase, a: QuantizerBase):
            def apply() -> None:
                layer.weight_quant, layer.input_quant = w, a
            return name, apply

        scores = budget.scores(model, [put(w, a) for (w, _), (a, _) in built])
        taken = 0
        for c, ((w, w_method), (a, a_method)), s in zip(batch, built, scores):
            taken += 1
            before = best["weight"], best["input"]
            if s > best["score"] + cfg.tolerance:
                best.update(score=s, weight=w, input=a, weight_method=w_method, input_method=a_method)
            changed = {"w": best["weight"] is not before[0], "a": best["input"] is not before[1]}
            rest = batch[taken:]
            if stop() or any(changed[side] and getattr(later, side) == "best" for later in rest for side in "wa"):
                break
        layer.weight_quant, layer.input_quant = best["weight"], best["input"]
        budget.spend(taken)
        budget.discarded += len(batch) - taken
        return taken

    def run_phase(candidates: list[Candidate], stop: Callable[[], bool] = lambda: False) -> None:
        while candidates and not stop() and budget.left(cfg.max_tries_per_layer):
            candidates = candidates[try_round(candidates, stop):]

    act_phase, weight_phase, bits_phase = candidates_for(old["weight"], old["input"], cfg.percentiles,
                                                         cfg.clip_ratios, cfg.more_bits, cfg.allow_float)
    chose_float = False
    if score < layer_goal:
        # the weight candidates use the best input found, so each phase's rounds end at its end
        run_phase(act_phase)
        run_phase(weight_phase)
        reached = lambda: best["score"] >= layer_goal  # noqa: E731
        wider = list(itertools.takewhile(lambda c: not c.float_, bits_phase))
        run_phase(wider, reached)
        if len(wider) < len(bits_phase) and not reached() and budget.left(cfg.max_tries_per_layer):
            chose_float = float_score > best["score"] + cfg.tolerance  # the float candidate: measured above
    record.tries = budget.layer_used
    if chose_float:
        set_submodule(model, name, layer.to_float())
        record.chosen, record.w_bits, record.a_bits = "float", None, None
        best["score"] = float_score
    else:
        record.w_bits, record.a_bits = best["weight"].bits, best["input"].bits
        if best["weight"] is not old["weight"] or best["input"] is not old["input"]:
            record.chosen = f"w:{best['weight_method']}@{record.w_bits}b a:{best['input_method']}@{record.a_bits}b"
    evaluator.commit(model, name)
    return best["score"]

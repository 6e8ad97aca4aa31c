"""Export a calibrated fake-quant model to a standard ONNX graph with QuantizeLinear /
DequantizeLinear (QDQ) pairs: the form onnxruntime and OpenVINO turn into integer kernels.

How: the network is exported once in float by ``torch.onnx.export`` (the dynamo exporter) with
every quantized layer's weight replaced by its dequantized value and the quantizers out of the
way; then, per quantized layer (found by its weight initializer, which keeps the parameter's
name), the weight becomes integer codes + ``DequantizeLinear`` and the layer's data input gets
the ``QuantizeLinear`` -> ``DequantizeLinear`` of its input quantizer (:mod:`.qdq` has one
handler per quantizer kind). Nothing else changes, so the graph computes what the simulation
computes:

* quantized: the inputs and weights of every quantized ``Conv2d`` / ``Linear`` (the ones a
  search or an override left in float have no Q/DQ, and a mixed-precision model carries each
  layer's own bits);
* float, as in the simulation: biases (the folded BatchNorm), the activation fused into each conv
  (SiLU = ``Sigmoid`` + ``Mul``, ReLU), residual adds, concatenations, pooling, upsampling, and
  whatever ``forward`` does after the last layer (here: the raw head outputs; box decode, DFL
  softmax, sigmoid and NMS stay outside the graph, in the same post-processing code that
  evaluates the simulation). A runtime is free to fuse DQ -> Conv into an integer kernel; which
  ops stay float there is the runtime's choice (``benchmarks/deploy.py`` measures it).
"""
from __future__ import annotations

import copy
import importlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import keystr, tree_flatten_with_path

from ..core.io import atomic_write
from ..quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear
from ..quant.swap import dequantize, quantized_layers
from .errors import INT4_OPSET, ExportError, calibrated_layers

MIN_OPSET = 13  # per-axis DequantizeLinear
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
_PASS_THROUGH = ("Transpose", "Reshape", "Identity", "Cast")


def require(*modules: str) -> None:
    """Import ``modules`` or raise :class:`ExportError` saying what to install."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"exporting and running the quantized model needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: pip install 'lightning_ptq[deploy]' (or pip install onnx onnxscript onnxruntime openvino).")


@dataclass
class LayerExport:
    """How one quantized layer went into the graph."""

    name: str
    op: str
    weight: str
    input: str
    w_bits: int | None
    a_bits: int | None


@dataclass
class ExportReport:
    """What :func:`to_onnx` wrote: the file, the opset, one entry per quantized layer, and the
    op types of the graph that run in float (outside the quantized layers' Q/DQ)."""

    path: str
    opset: int
    layers: list[LayerExport] = field(default_factory=list)
    float_ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def counts(self) -> dict[str, int]:
        """How many layers went in each weight form (``int4 codes, ...``, ``float values ...``)."""
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.weight] = out.get(layer.weight, 0) + 1
        return out


def output_names(outputs) -> list[str]:
    """ONNX output names for a (nested) model output, in the exporter's (pytree) order: dict keys
    as they are (``cls``, ``box``), ``output_<i>`` for positions."""
    leaves, _ = tree_flatten_with_path(outputs)
    names = []
    for i, (path, _) in enumerate(leaves):
        key = keystr(path).strip("[]'\"").replace("'][", ".").replace("][", ".")
        names.append(key if key and key.replace(".", "").replace("_", "").isalnum() and not key[0].isdigit()
                     else f"output_{i}")
    return names if len(set(names)) == len(names) else [f"output_{i}" for i in range(len(names))]


def check_exportable(qmodel: nn.Module, opset: int, int4_types: bool = True) -> dict[str, QuantLayerMixin]:
    """The quantized layers of ``qmodel``; :class:`ExportError` for an uncalibrated model, a layer
    or quantizer kind the exporter has no handler for, or bits the opset cannot carry."""
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset={opset!r} is too old: QDQ export needs opset >= {MIN_OPSET} "
                          f"(per-channel DequantizeLinear); {INT4_OPSET} for 4-bit codes.")
    from .qdq import INPUT_HANDLERS, WEIGHT_HANDLERS

    layers = quantized_layers(qmodel)
    for name, layer in layers.items():
        if type(layer) not in (QuantConv2d, QuantLinear):
            raise ExportError(f"layer {name!r} is a {type(layer).__name__}, which the ONNX exporter does not know: "
                              f"it exports QuantConv2d and QuantLinear.")
        for side, q, handlers in (("weight", layer.weight_quant, WEIGHT_HANDLERS),
                                  ("input", layer.input_quant, INPUT_HANDLERS)):
            if type(q) not in handlers:
                raise ExportError(
                    f"layer {name!r}: its {side} quantizer is a {type(q).__name__}, which the exporter does not know "
                    f"(known: {', '.join(t.__name__ for t in handlers)}).")
            if q.is_active and q.bits == 4 and opset < INT4_OPSET and int4_types:
                raise ExportError(
                    f"layer {name!r} has 4-bit {side}s, and opset={opset} has no int4 / uint4 types (they exist "
                    f"from opset {INT4_OPSET}): export with opset={INT4_OPSET}, or int4_types=False (4-bit codes in 8-bit "
                    f"types with a Clip).")
    return calibrated_layers(qmodel)


def float_twin(qmodel: nn.Module) -> nn.Module:
    """A float copy of ``qmodel`` whose layers hold the dequantized weights of the quantized ones."""
    twin = copy.deepcopy(qmodel).eval()
    with torch.no_grad():
        for layer in quantized_layers(twin).values():
            if layer.weight_quant.is_active:
                layer.weight.copy_(layer.weight_quant(layer.weight))
    return dequantize(twin)


def _failing_module(err: BaseException, model: nn.Module) -> str | None:
    """Name of the innermost module of ``model`` whose ``forward`` is on the traceback of ``err``."""
    names = {id(m): n for n, m in model.named_modules()}
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if id(owner) in names:
                found = names[id(owner)] or type(model).__name__
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return found


def _trace(model: nn.Module, example_input: torch.Tensor, opset: int, names: list[str], dynamic_batch: bool):
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per deduplicated constant
    dims = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        program = torch.onnx.export(model, (example_input,), None, dynamo=True, opset_version=opset, verbose=False,
                                    input_names=["images"], output_names=names, dynamic_shapes=dims, optimize=True)
    except Exception as err:  # the exporter raises many kinds; all mean the same to the user
        where = _failing_module(err, model)
        raise ExportError(
            f"torch.onnx.export could not trace {type(model).__name__}'s forward"
            + (f"; it failed inside module {where!r}" if where else "")
            + f" ({type(err).__name__}: {str(err).splitlines()[0][:300]}). Export the submodule that holds the network "
              f"(its raw outputs, before data-dependent post-processing such as NMS), e.g. to_onnx(qmodel.<submodule>, "
              f"...).") from err
    return program.model_proto


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _compute_nodes(weight: str, consumers: dict[str, list]) -> list:
    """The Conv / Gemm / MatMul nodes that use the initializer ``weight`` (through transposes)."""
    found, frontier = [], [weight]
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.op_type in COMPUTE_OPS and tensor != node.input[0]:
                found.append(node)
            elif node.op_type in _PASS_THROUGH:
                frontier.extend(node.output)
    return found


def insert_qdq(model_proto, layers: dict[str, QuantLayerMixin], opset: int, int4_types: bool = True) -> list[LayerExport]:
    """Rewrite the float graph in place: per quantized layer its weight codes and DQ, its input's Q/DQ."""
    from .qdq import INPUT_HANDLERS, WEIGHT_HANDLERS, GraphEdit

    graph = model_proto.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    position = {id(n): i for i, n in enumerate(graph.node)}
    before: dict[int, list] = {}  # node index -> nodes to insert in front of it
    head, new_inits, report = [], [], []
    for name, layer in layers.items():
        weight = f"{name}.weight"
        nodes = _compute_nodes(weight, consumers) if weight in initializers else []
        if not nodes:
            raise ExportError(
                f"layer {name!r}: its weight is not an initializer feeding a Conv / Gemm / MatMul of the exported "
                f"graph, so its quantization cannot be placed (does forward use {name} as a plain layer?).")
        entry = LayerExport(name, nodes[0].op_type, "float", "float",
                            layer.weight_quant.bits if layer.weight_quant.is_active else None,
                            layer.input_quant.bits if layer.input_quant.is_active else None)
        if layer.weight_quant.is_active:
            edit = GraphEdit(int4_types)
            how = WEIGHT_HANDLERS[type(layer.weight_quant)](layer.weight_quant, layer.weight, name, weight, opset, edit)
            if how is None:
                entry.weight = f"log-affine {layer.weight_quant.bits}-bit, float values (k not shift-exact)"
            else:
                entry.weight = how
                graph.initializer.remove(initializers[weight])  # the DQ output takes its name
                head += edit.nodes
                new_inits += edit.initializers
        if layer.input_quant.is_active:
            for i, node in enumerate(nodes):
                edit = GraphEdit(int4_types)
                suffix = "" if i == 0 else f".{i}"
                out = f"{name}.input_dequantized{suffix}"
                entry.input = INPUT_HANDLERS[type(layer.input_quant)](
                    layer.input_quant, node.input[0], f"{name}{suffix}", out, opset, edit)
                node.input[0] = out
                before.setdefault(position[id(node)], []).extend(edit.nodes)
                new_inits += edit.initializers
        report.append(entry)
    ordered = head + [n for i, node in enumerate(graph.node) for n in (*before.get(i, []), node)]
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    return report


def _float_op_counts(model_proto, report: list[LayerExport]) -> dict[str, int]:
    ours = ("QuantizeLinear", "DequantizeLinear", "Clip")
    counts: dict[str, int] = {}
    prefixes = tuple(f"{layer.name}." for layer in report)
    for node in model_proto.graph.node:
        if node.op_type in COMPUTE_OPS or (node.op_type in ours and node.name.startswith(prefixes)):
            continue
        if node.name.startswith(prefixes):  # a log-affine decode or rounding subgraph
            continue
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def check_writable(path: str | Path) -> Path:
    """``path`` as a Path whose folder exists (or can be made) and can be written, else ExportError."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"output path {str(path)!r} is a folder: give a file name, e.g. {str(path / 'model.onnx')!r}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ExportError(f"cannot write {str(path)!r} ({err.strerror or err}): choose a folder you can write to.") from None
    return path


def to_onnx(qmodel: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = INT4_OPSET,
            dynamic_batch: bool = True, int4_types: bool = True) -> ExportReport:
    """Export the calibrated ``qmodel`` to ``path`` as an ONNX QDQ graph (see the module docstring).

    Args:
        qmodel: a model from :func:`lightning_ptq.quantize`, calibrated.
        example_input: one input batch (``[B, 3, H, W]`` images); the graph takes any batch size
            with ``dynamic_batch``. The graph's input is named ``images``; its outputs are the
            model's outputs in order (dict keys as names).
        path: the ``.onnx`` file, written atomically (a single file, weights inside).
        opset: ONNX opset, >= 13; 4-bit codes need 21 (int4 / uint4).
        int4_types: ``False`` writes 4-bit codes in int8 / uint8 with a ``Clip`` to the 4-bit range
            (QCDQ): the same numbers, for a runtime without int4 / uint4 support (OpenVINO
            2026.4 crashes compiling a uint4 QuantizeLinear that follows a Concat), at twice the
            weight bytes. Opset 13 then carries 4-bit layers too.

    Returns an :class:`ExportReport` (one entry per quantized layer: how its weight and input
    went in). Raises :class:`~lightning_ptq.export.qdq.ExportError` with the reason and the fix.
    """
    require("onnx", "onnxscript")
    import onnx  # noqa: PLC0415 (optional dependency, checked above)

    path = check_writable(path)
    layers = check_exportable(qmodel, opset, int4_types)
    twin = float_twin(qmodel)
    with torch.no_grad():
        names = output_names(twin(example_input))
    model_proto = _trace(twin, example_input, opset, names, dynamic_batch)
    layers_report = insert_qdq(model_proto, layers, opset, int4_types)
    model_proto.producer_name = "lightning_ptq"
    onnx.checker.check_model(model_proto, full_check=True)
    atomic_write(path, lambda tmp: onnx.save(model_proto, tmp))
    return ExportReport(str(path), opset, layers_report, _float_op_counts(model_proto, layers_report))




def to_onnx_float(model: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = INT4_OPSET,
                  dynamic_batch: bool = True) -> Path:
    """Export a float model as :func:`to_onnx` exports a quantized one (same exporter, input and
    output names), to compare the quantized graph with: the FP32 baseline of a runtime."""
    require("onnx", "onnxscript")
    import onnx  # noqa: PLC0415 (optional dependency, checked above)

    path = check_writable(path)
    model = model.eval()
    with torch.no_grad():
        names = output_names(model(example_input))
    model_proto = _trace(model, example_input, opset, names, dynamic_batch)
    onnx.checker.check_model(model_proto, full_check=True)
    atomic_write(path, lambda tmp: onnx.save(model_proto, tmp))
    return path

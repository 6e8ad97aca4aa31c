"""Standard ONNX nodes for each kind of quantizer: one small handler per kind, chosen by type.

Every handler gets the calibrated quantizer and writes what the simulation computes with it:

* :class:`~lightning_ptq.quant.quantizer.UniformQuantizer` as weights: the integer codes as an
  int8 / int4 initializer and a ``DequantizeLinear`` (per output channel, zero point 0);
  as layer inputs: ``QuantizeLinear`` -> ``DequantizeLinear`` with the scale and the rounded zero
  point the simulation uses (uint8 / uint4, per tensor). Widths without an ONNX type (2, 3, 5, 6,
  7 bits) travel in the 8-bit type with a ``Clip`` to their range between the two (QCDQ).
* :class:`~lightning_ptq.quant.laq.LogAffineQuantizer` as weights: a shift-exact one (every
  ``1/k`` whole, levels ``mu + sign * s * 2^(n (j - L))``) as its signed integer codes and a small
  constant subgraph that decodes them by powers of two; any other ``k`` as the exact dequantized
  float values. As layer inputs: its log-affine rounding written out in float ops (``Log``,
  ``Round``, ``Pow``, ``Where``), since no ONNX quantize op has non-uniform levels.

ONNX's ``QuantizeLinear`` computes ``saturate(round_half_even(x / scale) + zero_point)``, which is
the simulation's formula (``torch.round`` rounds half to even too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import ml_dtypes
from onnx import TensorProto, helper, numpy_helper

from ..quant.laq import LogAffineQuantizer
from ..quant.quantizer import QuantizerBase, UniformQuantizer
from .errors import INT4_OPSET, ExportError

_NUMPY_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8,
                TensorProto.INT4: ml_dtypes.int4, TensorProto.UINT4: ml_dtypes.uint4, TensorProto.INT64: np.int64}


@dataclass
class GraphEdit:
    """Nodes and initializers that one layer adds to the graph; ``int4_types``: 4-bit codes as
    int4 / uint4 (else in int8 / uint8, see :func:`code_type`)."""

    int4_types: bool = True
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def const(self, name: str, array: np.ndarray, dtype: int = TensorProto.FLOAT) -> str:
        # numpy_helper stores raw bytes (int4 packed two to a byte); make_tensor's value lists
        # would store every int8 code as a varint in int32_data, several bytes each.
        array = np.asarray(array).astype(_NUMPY_TYPES[dtype])
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def code_type(bits: int, signed: bool, opset: int, int4_types: bool = True) -> tuple[int, bool]:
    """ONNX element type carrying ``bits``-wide codes, and whether a ``Clip`` must bound them.
    ``int4_types=False`` puts 4-bit codes in the 8-bit types with the ``Clip`` (same numbers, for
    runtimes that lack int4 / uint4 or mishandle them)."""
    if bits == 4 and not int4_types:
        return (TensorProto.INT8 if signed else TensorProto.UINT8), True
    if bits == 4 and opset >= INT4_OPSET:
        return (TensorProto.INT4 if signed else TensorProto.UINT4), False
    if bits == 4:
        raise ExportError(
            f"4-bit codes need ONNX's int4 / uint4 types, which exist from opset {INT4_OPSET}; opset={opset} "
            f"cannot carry them. Export with opset={INT4_OPSET} (onnx >= 1.16, onnxruntime >= 1.20).")
    return (TensorProto.INT8 if signed else TensorProto.UINT8), bits != 8


def _channel_shape(q: QuantizerBase, ndim: int) -> list[int]:
    shape = [1] * ndim
    if q.channel_axis is not None:
        shape[q.channel_axis] = -1
    return shape


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


# -- weights ------------------------------------------------------------------------------------
def uniform_weight(q: UniformQuantizer, weight: torch.Tensor, name: str, out: str, opset: int, edit: GraphEdit) -> str:
    """Integer codes + ``DequantizeLinear`` producing ``out``."""
    dtype, _ = code_type(q.bits, True, opset, edit.int4_types)  # weight codes are in range: no Clip
    codes = (q.codes(weight.detach()) + q.q_min).cpu().numpy()
    scale = q.step().detach().cpu().float().numpy()
    attrs = {"axis": q.channel_axis} if q.channel_axis is not None else {}
    if q.channel_axis is None:
        scale = scale.reshape(())
    inputs = [edit.const(f"{name}.weight_codes", codes, dtype), edit.const(f"{name}.weight_scale", scale),
              edit.const(f"{name}.weight_zero_point", np.zeros(scale.shape, np.int64), dtype)]
    edit.node("DequantizeLinear", inputs, out, **attrs)
    kind = f"int{q.bits} codes" if dtype != TensorProto.INT8 or q.bits == 8 else f"{q.bits}-bit codes in int8"
    return f"{kind}, DequantizeLinear per {'tensor' if q.channel_axis is None else 'channel'}"


def laq_weight(q: LogAffineQuantizer, weight: torch.Tensor, name: str, out: str, opset: int,
               edit: GraphEdit) -> str | None:
    """Shift-exact: signed codes and their power-of-two decode producing ``out``. Otherwise
    ``None``: the float export already holds the exact dequantized values."""
    steps = q.shift_steps()
    if steps is None:
        return None
    signed = (q.codes(weight.detach()) - q.levels).cpu().numpy()  # sign * j, 0 = the level at mu
    shape = _channel_shape(q, weight.dim())
    up, down = (np.float64(2.0) ** _np(q.log2_s[i]).reshape(shape) for i in (0, 1))
    n_up, n_down = (steps[i].numpy().reshape(shape).astype(np.float64) for i in (0, 1))
    c = edit.const(f"{name}.weight_codes", signed, TensorProto.INT8)
    cf = edit.node("Cast", [c], f"{name}.weight_codes_f", to=TensorProto.FLOAT)
    neg = edit.node("Less", [cf, edit.const(f"{name}.zero", np.float32(0))], f"{name}.weight_below")
    n = edit.node("Where", [neg, edit.const(f"{name}.n_below", n_down), edit.const(f"{name}.n_above", n_up)],
                  f"{name}.weight_n")
    # shift = n * (|j| - L) <= 0: the level is s * 2^shift, a right shift of s by -shift bits.
    j = edit.node("Sub", [edit.node("Abs", [cf], f"{name}.weight_j"), edit.const(f"{name}.L", np.float32(q.levels))],
                  f"{name}.weight_j_minus_L")
    shift = edit.node("Mul", [n, j], f"{name}.weight_shift")
    power = edit.node("Pow", [edit.const(f"{name}.two", np.float32(2.0)), shift], f"{name}.weight_pow2")
    s = edit.node("Where", [neg, edit.const(f"{name}.s_below", down), edit.const(f"{name}.s_above", up)],
                  f"{name}.weight_s")
    signed_level = edit.node("Mul", [edit.node("Sign", [cf], f"{name}.weight_sign"),
                                     edit.node("Mul", [s, power], f"{name}.weight_level")], f"{name}.weight_dist")
    edit.node("Add", [edit.const(f"{name}.weight_mu", _np(q.mu).reshape(shape)), signed_level], out)
    return f"log-affine int{q.bits} codes, levels s*2^shift (shift-exact)"


# -- layer inputs -------------------------------------------------------------------------------
def uniform_input(q: UniformQuantizer, x: str, name: str, out: str, opset: int, edit: GraphEdit) -> str:
    """``QuantizeLinear`` (-> ``Clip``) -> ``DequantizeLinear`` from ``x`` to ``out``."""
    dtype, clip = code_type(q.bits, False, opset, edit.int4_types)
    scale = q.step().detach().cpu().float().numpy()
    zero = torch.round(q.zero_point.detach()).clamp(q.q_min, q.q_max).cpu().numpy().astype(np.int64)
    attrs = {}
    if q.channel_axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
    else:
        attrs["axis"] = q.channel_axis
    s = edit.const(f"{name}.input_scale", scale)
    z = edit.const(f"{name}.input_zero_point", zero, dtype)
    codes = edit.node("QuantizeLinear", [x, s, z], f"{name}.input_codes", **attrs)
    if clip:
        lo, hi = (edit.const(f"{name}.input_{k}", np.array(v, np.int64), dtype)
                  for k, v in (("min", q.q_min), ("max", q.q_max)))
        codes = edit.node("Clip", [codes, lo, hi], f"{name}.input_codes_clipped")
    edit.node("DequantizeLinear", [codes, s, z], out, **attrs)
    kind = f"uint{q.bits}" if not clip else f"{q.bits}-bit codes in uint8 + Clip"
    return f"{kind} QuantizeLinear/DequantizeLinear per {'tensor' if q.channel_axis is None else 'channel'}"


def laq_input(q: LogAffineQuantizer, x: str, name: str, out: str, opset: int, edit: GraphEdit) -> str:
    """The log-affine fake quantization of ``x`` in float ops (as ``LogAffineQuantizer.quantize``)."""
    shape = [1, -1, 1, 1] if q.channel_axis is not None else []
    p = f"{name}.input"

    def per_channel(key: str, value: torch.Tensor) -> str:
        arr = _np(value).astype(np.float32)
        return edit.const(f"{p}_{key}", arr.reshape(shape) if shape else arr.reshape(()))

    mu = per_channel("mu", q.mu)
    d = edit.node("Sub", [x, mu], f"{p}_d")
    above = edit.node("GreaterOrEqual", [d, edit.const(f"{p}_zero", np.float32(0))], f"{p}_above")
    log2_s = edit.node("Where", [above, per_channel("log2_s_above", q.log2_s[0]),
                                 per_channel("log2_s_below", q.log2_s[1])], f"{p}_log2_s")
    k = edit.node("Where", [above, per_channel("k_above", torch.exp2(q.log2_k[0])),
                            per_channel("k_below", torch.exp2(q.log2_k[1]))], f"{p}_k")
    dist = edit.node("Abs", [d], f"{p}_dist")
    log2_d = edit.node("Mul", [edit.node("Log", [edit.node("Max", [dist, edit.const(f"{p}_tiny", np.float32(1e-12))],
                                                           f"{p}_dist_pos")], f"{p}_ln_d"),
                               edit.const(f"{p}_inv_ln2", np.float32(1 / math.log(2)))], f"{p}_log2_d")
    levels = edit.const(f"{p}_L", np.float32(q.levels))
    psi = edit.node("Add", [edit.node("Mul", [k, edit.node("Sub", [log2_d, log2_s], f"{p}_log_ratio")], f"{p}_klog"),
                            levels], f"{p}_psi")
    code = edit.node("Clip", [edit.node("Round", [psi], f"{p}_psi_round"), edit.const(f"{p}_one", np.float32(1)),
                              levels], f"{p}_code")
    two = edit.const(f"{p}_two", np.float32(2.0))
    level = edit.node("Pow", [two, edit.node("Add", [log2_s, edit.node("Div", [
        edit.node("Sub", [code, levels], f"{p}_code_minus_L"), k], f"{p}_exponent")], f"{p}_log2_level")], f"{p}_level")
    smallest = edit.node("Pow", [two, edit.node("Add", [log2_s, edit.node("Div", [
        edit.const(f"{p}_one_minus_L", np.float32(1 - q.levels)), k], f"{p}_min_exponent")], f"{p}_log2_min")],
        f"{p}_min_level")
    tiny = edit.node("Less", [dist, edit.node("Mul", [smallest, edit.const(f"{p}_half", np.float32(0.5))],
                                              f"{p}_half_min")], f"{p}_to_zero")
    d_hat = edit.node("Where", [tiny, edit.const(f"{p}_zero_f", np.float32(0)), level], f"{p}_d_hat")
    signed = edit.node("Where", [above, d_hat, edit.node("Neg", [d_hat], f"{p}_neg_d_hat")], f"{p}_signed")
    edit.node("Add", [mu, signed], out)
    return f"log-affine {q.bits}-bit rounding in float ops"


WEIGHT_HANDLERS = {UniformQuantizer: uniform_weight, LogAffineQuantizer: laq_weight}
INPUT_HANDLERS = {UniformQuantizer: uniform_input, LogAffineQuantizer: laq_input}

"""Integer-only execution of a calibrated fake-quant model, layer by layer, in PyTorch.

:func:`to_integer` turns a calibrated model from :func:`lightning_ptq.quantize` into an
:class:`IntegerModel`: a copy in which every quantized ``Conv2d`` / ``Linear`` that an integer
kernel can run is replaced by an :class:`IntegerLayer` computing what a TFLite / gemmlowp style
kernel computes. It is a check of the simulation: same inputs, same outputs (to one step of each
layer's output grid, :func:`compare_layers` measures it), with the arithmetic an integer
accelerator does.

Integer, per integer layer:

* the input codes ``q_x = clamp(round(x / s_x) + zp_x)``, computed by the input quantizer's own
  ``codes()`` (the simulation's rounding, so the codes are the simulation's codes); a conv pads
  with the zero-point code (padded value = real 0);
* the weight codes (symmetric, zero point 0, one step ``s_w[c]`` per output channel: the
  quantizer's ``step()``, ``|scale|``, as in the simulation);
* the products and their sum, in int32: int8 operands (input codes shifted to int8 by -128, the
  correction ``(128 - zp_x) * sum(w[c])`` folded into the bias) through ``torch._int_mm``
  (int8 x int8 -> int32) for plain convs / linears on CPU (and on CUDA where its shape rules
  allow), else an exact int64 matmul (grouped / depthwise convs; on CUDA a float64 matmul, exact
  for these integer sums far below 2^53); im2col by ``F.unfold`` on the codes carried in float
  (exact for small integers);
* the bias: int32, ``round(b[c] / (s_x * s_w[c]))`` (TFLite's convention). Where the output grid
  is finer than the accumulator's step (low bit widths), accumulator and bias are first brought to
  a finer grid by a left shift of ``P[c]`` bits (``P = 0``, TFLite's case, when
  ``s_x * s_w[c] / s_out <= 1/4``), so the bias keeps sub-step precision;
* the requantization to an int16 output grid of one scale per tensor, ``s_out`` (4 times the
  largest pre-activation magnitude the simulation reaches on the calibration batches, over 32767):
  :func:`~.fixed_point.multiply_by_quantized_multiplier` with the fixed-point form of
  ``s_x * s_w[c] / s_out`` (per channel), then saturation to int16;
* weights of a shift-exact log-affine quantizer (LAQ with ``1/k`` whole, ``shift_steps()``): a
  level is ``mu + sign * s_side * 2^(-n * (L - |j|))`` for code ``j``, so ``sum_k x_k w_k`` is
  ``mu * sum_k x_k`` plus, per side, a sum of the input codes shifted by the level's exponent
  (terms of one exponent are summed first, then shifted once, at ``F`` fractional bits as the
  int32 range allows; ``1``-masks through the same int8 matmul). Each of these sums gets its own
  fixed-point multiplier onto a common integer grid up to ``2^12`` times finer than the output grid,
  they are added with the bias there, and one rounding shift gives the int16 output.

Float, as in the simulation:

* the boundaries: float -> codes at each integer layer's input, and ``y = q_out * s_out`` at its
  output;
* after that, the activation fused into the conv (SiLU, ReLU, ...): a lookup table or a
  piecewise kernel on a device; here it is applied to the dequantized int16 output;
* everything the model does between and after the quantized layers: residual adds,
  concatenations, pooling, upsampling, and the output decoding / NMS, which is the same float code
  that evaluates the simulation (the :class:`IntegerModel` has the model's outputs, methods and
  attributes);
* layers an integer kernel cannot run: LAQ weights with a general (learned) ``k`` (their levels
  are not powers of two: a float or lookup-table kernel would run them), LAQ input codes (log
  codes do not add up as integers), per-channel input scales, disabled quantizers. These run as
  in the simulation (dequantized weights, simulated input quantization), and
  :attr:`IntegerModel.report` says so with the reason.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.tree import batch_inputs
from ..quant.laq import LogAffineQuantizer
from ..quant.layers import QuantConv2d, QuantLayerMixin, QuantLinear
from ..quant.quantizer import UniformQuantizer
from ..quant.swap import quantized_layers, set_submodule
from .errors import ExportError, calibrated_layers
from .fixed_point import (
    INT16_MAX, INT16_MIN, INT32_MAX, multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide_by_pot,
)

INT8_OFFSET = 128  # input codes in [0, 2^bits) minus 128 are int8
GUARD_BITS = 12  # fractional bits of the common grid of the LAQ-shift terms
_HEADROOM_LIMIT = 1 << 30  # int32 bound kept by the shift sums (one bit of margin)
# Output grids span 4x the largest pre-activation of the calibration batches: test images go
# beyond it. With 1x, the default W4A4 detector's int16 outputs saturated on test images and its
# test mAP moved +0.0066 from the simulation (every layer 99.9992% within one step); with 4x,
# +0.0018 and 100% (W8A8: +0.0001 and -0.0005).
HEADROOM = 4.0


# -- exact integer matmuls ---------------------------------------------------------------------
def _int_mm_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch._int_mm`` runs on CPU for any shape; on CUDA it needs m > 16 and k, n multiples of 8."""
    if a.device.type == "cpu":
        return True
    return a.device.type == "cuda" and a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0


def group_matmul(a: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """Exact integer ``[N, G * O]`` (int64) from int8 patches ``a`` ``[G, N, K]`` and int8 weights
    ``w_t`` ``[G, K, O]``: one ``torch._int_mm`` (int32 accumulate) when ``G == 1``, else a batched
    int64 matmul (float64 off CPU: exact, the sums being integers far below 2^53)."""
    groups, n, _ = a.shape
    if groups == 1 and a.dtype == torch.int8 and w_t.dtype == torch.int8 and _int_mm_ok(a[0], w_t[0]):
        return torch._int_mm(a[0].contiguous(), w_t[0].contiguous()).to(torch.int64)
    if a.device.type == "cpu":
        out = torch.bmm(a.to(torch.int64), w_t.to(torch.int64))
    else:
        out = torch.bmm(a.to(torch.float64), w_t.to(torch.float64)).round().to(torch.int64)
    return out.permute(1, 0, 2).reshape(n, -1)


def _step(q: UniformQuantizer) -> torch.Tensor:
    """The grid step the simulation uses: ``step()`` (``|scale|``, floored) where the quantizer has it."""
    return (q.step() if hasattr(q, "step") else q.scale).detach()


def _bias(layer: nn.Module) -> torch.Tensor:
    """The layer's float bias in float64 (zeros without one)."""
    if layer.bias is None:
        return torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=layer.weight.device)
    return layer.bias.detach().double()


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _saturate16(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(INT16_MIN, INT16_MAX)


# -- integer layers ----------------------------------------------------------------------------
class IntegerLayer(nn.Module):
    """Base of the integer layers: float -> codes at the input, int8 im2col patches, the int16
    pre-activation output (:meth:`integer_output`, from the subclass's :meth:`_accumulate`), then
    ``q_out * s_out`` and the fused activation in float (:meth:`forward`)."""

    kind = "integer"

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized_weight

    def __init__(self, layer: QuantLayerMixin, out_scale: float) -> None:
        super().__init__()
        iq: UniformQuantizer = layer.input_quant
        self.input_quant = iq  # its codes() is the simulation's rounding
        # For code that reads a layer's weights besides calling it (the keypoint model's cosine
        # logits divide by the norm of the dequantized weights): the simulation's dequantized
        # weights, not saved in the state (forward never uses them).
        self.weight_quant = layer.weight_quant
        self.register_buffer("dequantized_weight", layer.weight_quant(layer.weight).detach(), persistent=False)
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.out_features = layer.weight.shape[0]
        if self.is_conv:
            self.kernel_size, self.stride = tuple(layer.kernel_size), tuple(layer.stride)
            self.dilation, self.groups = tuple(layer.dilation), layer.groups
            self.pads = tuple(layer._reversed_padding_repeated_twice)  # (left, right, top, bottom)
            self.padding_mode = layer.padding_mode
        else:
            self.groups = 1
        self.activation = layer._modules.get("activation")
        zp = torch.round(iq.zero_point.detach()).clamp(iq.q_min, iq.q_max)
        self.zp_code = int(zp.reshape(-1)[0].item()) - iq.q_min  # the code of real 0
        self.a_max = max(self.zp_code, (1 << iq.bits) - 1 - self.zp_code)  # largest |code - zp|
        self.in_scale = float(_step(iq).reshape(-1)[0].double().item())
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))
        self.w_bits, self.a_bits = layer.weight_quant.bits, iq.bits

    # The weight as [G, O, K] rows of one group each (K: one group's patch).
    def _group_rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.groups, self.out_features // self.groups, -1)

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Input codes minus 128 as int8 patches ``[G, N, K]`` and the output's leading shape."""
        codes = self.input_quant.codes(x).to(torch.float32) - INT8_OFFSET  # small integers: exact
        if not self.is_conv:
            lead = tuple(codes.shape[:-1])
            return codes.reshape(1, -1, codes.shape[-1]).to(torch.int8), lead
        if any(self.pads):
            if self.padding_mode == "zeros":  # pad with the zero-point code: padded value is real 0
                codes = F.pad(codes, self.pads, value=float(self.zp_code - INT8_OFFSET))
            else:
                codes = F.pad(codes, self.pads, mode=self.padding_mode)
        b, _, h, w = codes.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(codes, self.kernel_size, dilation=self.dilation, stride=self.stride)  # [B, C*kh*kw, L]
        cols = cols.transpose(1, 2).reshape(b * out_h * out_w, self.groups, -1).permute(1, 0, 2)
        return cols.to(torch.int8), (b, out_h, out_w)

    def _accumulate(self, patches: torch.Tensor) -> torch.Tensor:
        """int16-valued int64 ``[N, out_features]`` from the int8 patches."""
        raise NotImplementedError

    @torch.no_grad()
    def integer_output(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation output on the int16 grid of ``out_scale`` (int64 tensor shaped like
        the float layer's output)."""
        patches, lead = self._patches(x)
        q = self._accumulate(patches)
        if not self.is_conv:
            return q.reshape(*lead, self.out_features)
        b, out_h, out_w = lead
        return q.reshape(b, out_h, out_w, self.out_features).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.integer_output(x).to(torch.float32) * self.out_scale).to(x.dtype)
        return y if self.activation is None else self.activation(y)

    def extra_repr(self) -> str:
        return f"{self.kind}, w_bits={self.w_bits}, a_bits={self.a_bits}, out_scale={self.out_scale.item():.4g}"


class IntegerUniformLayer(IntegerLayer):
    """Uniform (symmetric) integer weights: int32 accumulate, int32 bias, one fixed-point rescale."""

    kind = "integer"

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized_weight

    def __init__(self, layer: QuantLayerMixin, out_scale: float) -> None:
        super().__init__(layer, out_scale)
        wq: UniformQuantizer = layer.weight_quant
        w = layer.weight.detach()
        w_zp = torch.round(wq.zero_point.detach()).clamp(wq.q_min, wq.q_max)
        shape = wq._param_shape(w)
        q_w = wq.codes(w) + wq.q_min - w_zp.reshape(shape).to(torch.int64)  # signed integer weights
        s_w = _step(wq).double().reshape(-1)
        s_w = s_w.expand(self.out_features) if wq.channel_axis is None else s_w
        rows = self._group_rows(q_w)
        # int8 operands, and the int32 sum of (q - 128) * w cannot overflow
        int8 = bool(rows.min() >= -128 and rows.max() <= 127) and rows.shape[-1] * 128 * 128 < INT32_MAX
        self.register_buffer("w_t", rows.transpose(1, 2).contiguous().to(torch.int8 if int8 else torch.int64))
        w_sum = q_w.reshape(self.out_features, -1).sum(1)
        bias = _bias(layer)
        acc_unit = self.in_scale * s_w  # value of one accumulator step, per channel
        if not ((acc_unit > 0) & torch.isfinite(acc_unit)).all():
            raise _Unsupported("zero or non-finite quantizer step")
        real_m = acc_unit / out_scale
        # Finer accumulator grid where the output grid is finer than it: M / 2^P <= 1/4.
        p = (torch.ceil(torch.log2(real_m)) + 2).clamp(min=0)
        bias_acc = bias / acc_unit
        bound = q_w.reshape(self.out_features, -1).abs().sum(1).double() * self.a_max + bias_acc.abs() + 1
        p_max = torch.floor(torch.log2((INT32_MAX - 1) / bound))
        p = torch.minimum(p, p_max)
        if (p < 0).any() or (real_m / torch.exp2(p) > 1).any():
            raise _Unsupported("int32 accumulator range exceeded")
        self.register_buffer("p", p.to(torch.int64))
        correction = (INT8_OFFSET - self.zp_code) * w_sum  # sum_k (q - zp) w = sum_k (q - 128) w + this
        self.register_buffer("bias_acc", _round_half_away(bias_acc * torch.exp2(p)).to(torch.int64))
        self.register_buffer("correction", correction.to(torch.int64))
        mult, shift = quantize_multiplier(real_m / torch.exp2(p))
        self.register_buffer("multiplier", mult)
        self.register_buffer("shift", shift)

    def _accumulate(self, patches: torch.Tensor) -> torch.Tensor:
        acc = group_matmul(patches, self.w_t) + self.correction  # int32: sum_k (q_x - zp_x) * q_w
        acc = torch.bitwise_left_shift(acc, self.p) + self.bias_acc
        return _saturate16(multiply_by_quantized_multiplier(acc, self.multiplier, self.shift))


class IntegerShiftLayer(IntegerLayer):
    """Shift-exact LAQ weights: ``sum_k x_k w_k = mu sum_k x_k + s_up sum_up x_k 2^e_k -
    s_down sum_down x_k 2^e_k``, the power-of-two products done as shifts (see the module
    docstring), each sum rescaled by its own fixed-point multiplier onto a common grid."""

    kind = "integer, LAQ shifts"

    def __init__(self, layer: QuantLayerMixin, out_scale: float, steps: torch.Tensor) -> None:
        super().__init__(layer, out_scale)
        wq: LogAffineQuantizer = layer.weight_quant
        w = layer.weight.detach()
        cout, levels = self.out_features, wq.levels

        def per_channel(t: torch.Tensor) -> torch.Tensor:  # [..., C or 1] -> [..., cout]
            t = t.detach().double()
            return t.expand(*t.shape[:-1], cout) if t.shape[-1] == 1 and cout != 1 else t

        mu = per_channel(wq.mu)
        log2_s = per_channel(wq.log2_s)  # [2, cout]: above mu, below mu
        n = steps.expand(2, cout) if steps.shape[-1] == 1 else steps
        j = (wq.codes(w) - levels).reshape(cout, -1)  # signed level index, 0: the level mu
        m = levels - j.abs()  # level exponent is -n * m
        side = (j < 0).to(torch.int64)
        e = -(n.gather(0, side.t().contiguous()).t() * m)  # [cout, K]
        level = mu[:, None] + torch.sign(j) * torch.exp2(log2_s.gather(0, side.t().contiguous()).t() + e)
        level = torch.where(j == 0, mu[:, None].expand_as(level), level)
        sim = wq(w).detach().double().reshape(cout, -1)
        tol = 1e-5 * sim.abs().amax(1, keepdim=True) + 1e-4 * sim.abs()
        if ((level - sim).abs() > tol).any():
            raise _Unsupported("LAQ levels do not match the shifts")
        k_group = j.shape[1]  # = one group's patch length

        # Per side: fractional bits F so that sum_k |x_k| 2^(F - n m_k) stays below 2^30.
        frac_bits, groups_of_m = [], []
        for s in (0, 1):
            on_side = (j > 0) if s == 0 else (j < 0)
            weight = (on_side.double() * torch.exp2(-(n[s][:, None] * m).double())).sum(1)  # sum_k 2^(-n m_k)
            f = torch.floor(torch.log2(_HEADROOM_LIMIT / (self.a_max * weight).clamp_min(1e-300))).clamp(0, 30)
            frac_bits.append(f.to(torch.int64))
            groups_of_m.append(sorted(set(m[on_side].tolist())))
        self.register_buffer("frac_bits", torch.stack(frac_bits))  # [2, cout]
        self.register_buffer("steps", n.clone())
        # One {0, 1} mask per (level distance m): rows [up; down] of every group, int8.
        ms = sorted(set(groups_of_m[0]) | set(groups_of_m[1]))
        masks, counts = [], []
        for mm in ms:
            up, down = ((j > 0) & (m == mm)), ((j < 0) & (m == mm))
            both = torch.stack([self._group_rows(up), self._group_rows(down)], 1)  # [G, 2, O, K]
            masks.append(both.reshape(self.groups, -1, k_group).transpose(1, 2).to(torch.int8).contiguous())
            counts.append(torch.stack([up.sum(1), down.sum(1)]))  # [2, cout]
        self.ms = ms
        empty = torch.zeros(0, self.groups, k_group, 0, dtype=torch.int8)
        self.register_buffer("masks", torch.stack(masks) if masks else empty)
        self.register_buffer("counts", torch.stack(counts) if counts else torch.zeros(0, 2, cout, dtype=torch.int64))
        self.register_buffer("ones", torch.ones(self.groups, k_group, 1, dtype=torch.int8))

        # Fixed-point multipliers onto the common grid u = s_out / 2^G.
        bias = _bias(layer)
        s_x = self.in_scale
        if not s_x > 0:
            raise _Unsupported("non-positive input scale")
        side_unit = s_x * torch.exp2(log2_s - torch.stack(frac_bits).double())  # value of one T step, [2, cout]
        bound_steps = (k_group * self.a_max * s_x * mu.abs() + _HEADROOM_LIMIT * side_unit.sum(0)
                       + bias.abs()) / out_scale  # worst case |term| in output steps, summed
        guard = min(GUARD_BITS, math.floor(math.log2((INT32_MAX - 1) / (2 * float(bound_steps.max()) + 2))))
        if guard < 0:
            raise _Unsupported("int32 range exceeded by the shift sums")
        self.guard = guard
        unit = out_scale / 2 ** guard
        mu_mult, mu_shift = quantize_multiplier(s_x * mu.abs() / unit)
        side_mult, side_shift = quantize_multiplier(side_unit / unit)
        self.register_buffer("mu_sign", torch.sign(mu).to(torch.int64))
        self.register_buffer("mu_mult", mu_mult)
        self.register_buffer("mu_shift", mu_shift)
        self.register_buffer("side_mult", side_mult)  # [2, cout]
        self.register_buffer("side_shift", side_shift)
        self.register_buffer("bias_u", _round_half_away(bias / unit).to(torch.int64))

    def _expand_groups(self, t: torch.Tensor) -> torch.Tensor:
        """[N, G] per-group sums -> [N, cout]."""
        return t.repeat_interleave(self.out_features // self.groups, dim=1)

    def _accumulate(self, patches: torch.Tensor) -> torch.Tensor:
        offset = INT8_OFFSET - self.zp_code  # x_k = (q_k - 128) + offset
        k_group = patches.shape[-1]
        total = self._expand_groups(group_matmul(patches, self.ones) + offset * k_group)  # sum_k x_k
        sides = torch.zeros(2, patches.shape[1], self.out_features, dtype=torch.int64, device=patches.device)
        for i, mm in enumerate(self.ms):
            g = group_matmul(patches, self.masks[i])  # [N, G * 2 * O]
            g = g.reshape(-1, self.groups, 2, self.out_features // self.groups).permute(2, 0, 1, 3)
            g = g.reshape(2, -1, self.out_features) + offset * self.counts[i][:, None, :]  # sum over k of x_k, this m
            amount = (self.frac_bits - self.steps * mm)[:, None, :]  # 2^(F - n m): left if >= 0, else rounded right
            left = torch.bitwise_left_shift(g, amount.clamp(min=0))
            right = rounding_divide_by_pot(g, (-amount).clamp(0, 62))
            sides += torch.where(amount >= 0, left, right)
        acc = (self.mu_sign * multiply_by_quantized_multiplier(total, self.mu_mult, self.mu_shift)
               + multiply_by_quantized_multiplier(sides[0], self.side_mult[0], self.side_shift[0])
               - multiply_by_quantized_multiplier(sides[1], self.side_mult[1], self.side_shift[1])
               + self.bias_u)
        return _saturate16(rounding_divide_by_pot(acc, self.guard))


class _Unsupported(Exception):
    """This layer stays float; the message is the reason."""


# -- the model ---------------------------------------------------------------------------------
class IntegerModel(nn.Module):
    """A copy of a calibrated quantized model whose quantized layers run as :class:`IntegerLayer`
    where they can. ``forward`` is the wrapped model's (same signature, same outputs); other
    attributes (``postprocess``, ``anchors``, ...) are the wrapped model's too, so the same
    evaluation code runs on it. ``report``: one dict per quantized layer (``name``, ``kind``,
    ``w_bits``, ``a_bits``, ``out_scale``)."""

    def __init__(self, model: nn.Module, report: list[dict]) -> None:
        super().__init__()
        self.model = model
        self.report = report

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model" or name.startswith("_") or "model" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["model"], name)

    def integer_layers(self) -> dict[str, IntegerLayer]:
        """Name (as in the quantized model) -> integer layer."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, IntegerLayer)}


def _pre_activation_hooks(layers: dict[str, nn.Module], callback: Callable[[str, torch.Tensor, torch.Tensor], None]):
    """Hooks calling ``callback(name, layer_input, pre_activation_output)`` after each call of each
    layer (the pre-activation is read before a fused, possibly in-place, activation runs)."""
    handles, pending = [], {}
    for name, layer in layers.items():
        activation = layer._modules.get("activation")
        if activation is None:
            handles.append(layer.register_forward_hook(lambda mod, args, out, n=name: callback(n, args[0], out)))
        else:
            handles.append(layer.register_forward_pre_hook(lambda mod, args, n=name: pending.__setitem__(n, args[0])))
            handles.append(activation.register_forward_pre_hook(
                lambda mod, args, n=name: callback(n, pending.pop(n), args[0]) if n in pending else None))
    return handles


def _run(model: nn.Module, batches: Iterable) -> int:
    used = 0
    with torch.no_grad():
        for batch in batches:
            model(batch_inputs(batch))
            used += 1
    return used


def _float_reason(layer: QuantLayerMixin) -> str | None:
    """Why ``layer`` cannot run as an integer layer, or ``None``."""
    wq, iq = layer.weight_quant, layer.input_quant
    if type(layer) not in (QuantConv2d, QuantLinear):
        return f"{type(layer).__name__} has no integer kernel"
    if not wq.is_active:
        return "weight quantizer disabled"
    if not iq.is_active:
        return "input quantizer disabled"
    if isinstance(iq, LogAffineQuantizer):
        return "LAQ input quantizer (log codes do not add up as integers)"
    if not isinstance(iq, UniformQuantizer):
        return f"input quantizer {type(iq).__name__} has no integer codes"
    if iq.scale.numel() > 1 and not torch.all(_step(iq) == _step(iq).reshape(-1)[0]):
        return "per-channel input scales"
    zero_points = torch.round(iq.zero_point.detach())
    if zero_points.numel() > 1 and not torch.all(zero_points == zero_points.reshape(-1)[0]):
        return "per-channel input zero points"
    if wq.channel_axis not in (None, 0):
        return f"weights quantized along axis {wq.channel_axis}"
    if isinstance(wq, LogAffineQuantizer):
        if wq.shift_steps() is None:
            return "general-k LAQ weights (levels are not powers of two)"
    elif not isinstance(wq, UniformQuantizer):
        return f"weight quantizer {type(wq).__name__} has no integer codes"
    return None


@torch.no_grad()
def to_integer(qmodel: nn.Module, calib_batches: Iterable, headroom: float = HEADROOM) -> IntegerModel:
    """An :class:`IntegerModel` of the calibrated ``qmodel`` (which is left unchanged).

    Args:
        qmodel: a model from :func:`lightning_ptq.quantize`, calibrated.
        calib_batches: batches (tensors, or anything :func:`~lightning_ptq.calib.batch_inputs`
            reads) run through the simulation to set each integer layer's output scale.
        headroom: output scale = ``headroom * max |pre-activation| / 32767``: room for values
            beyond those the calibration batches reach, before int16 saturation (the default,
            :data:`HEADROOM`, keeps 13 bits of magnitude, far finer than the next layer's input
            grid).

    Raises :class:`~lightning_ptq.export.errors.ExportError` for a model without quantized layers,
    an uncalibrated one, or no calibration batch.
    """
    calibrated_layers(qmodel)
    model = copy.deepcopy(qmodel).eval()
    sim_layers = quantized_layers(model)
    amax: dict[str, float] = {}

    def record(name: str, _x: torch.Tensor, pre: torch.Tensor) -> None:
        amax[name] = max(amax.get(name, 0.0), float(pre.detach().abs().max()))

    handles = _pre_activation_hooks(sim_layers, record)
    try:
        used = _run(model, calib_batches)
    finally:
        for h in handles:
            h.remove()
    if used == 0:
        raise ExportError("to_integer got no calibration batch: the output scales come from running some.")

    report = []
    for name, layer in sim_layers.items():
        w_bits = layer.weight_quant.bits if layer.weight_quant.is_active else None
        a_bits = layer.input_quant.bits if layer.input_quant.is_active else None
        reason = _float_reason(layer)
        if reason is None and name not in amax:
            reason = "not reached by the calibration batches (no output range)"
        if reason is None and amax[name] == 0:
            reason = "zero output on the calibration batches (no output range)"
        out_scale = None
        if reason is None:
            out_scale = headroom * amax[name] / INT16_MAX
            try:
                if isinstance(layer.weight_quant, LogAffineQuantizer):
                    new = IntegerShiftLayer(layer, out_scale, layer.weight_quant.shift_steps())
                else:
                    new = IntegerUniformLayer(layer, out_scale)
            except _Unsupported as err:
                reason, out_scale = str(err), None
            else:
                set_submodule(model, name, new)
        kind = f"float: {reason}" if reason is not None else new.kind
        report.append({"name": name, "kind": kind, "w_bits": w_bits, "a_bits": a_bits, "out_scale": out_scale})
    return IntegerModel(model, report).eval()


@torch.no_grad()
def compare_layers(int_model: IntegerModel, qmodel: nn.Module, batches: Iterable) -> dict[str, float]:
    """For every integer layer of ``int_model``: the share of its pre-activation outputs (on its int16
    grid) within one output step of the simulation's pre-activation (divided by ``out_scale``),
    each layer fed the simulation's own input to it (hooks on ``qmodel``) over ``batches``."""
    int_layers = int_model.integer_layers()
    sim_layers = {n: qmodel.get_submodule(n) for n in int_layers}
    close: dict[str, int] = dict.fromkeys(int_layers, 0)
    total: dict[str, int] = dict.fromkeys(int_layers, 0)

    def count(name: str, x: torch.Tensor, pre: torch.Tensor) -> None:
        layer = int_layers[name]
        q = layer.integer_output(x).double()
        ref = pre.detach().double() / layer.out_scale.double()
        close[name] += int(((q - ref).abs() <= 1.0).sum())
        total[name] += q.numel()

    was_training = qmodel.training
    qmodel.eval()
    handles = _pre_activation_hooks(sim_layers, count)
    try:
        _run(qmodel, batches)
    finally:
        for h in handles:
            h.remove()
        qmodel.train(was_training)
    return {n: close[n] / total[n] for n in int_layers if total[n]}

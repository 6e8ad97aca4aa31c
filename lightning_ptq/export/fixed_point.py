"""Fixed-point requantization as integer-only runtimes do it (gemmlowp / TFLite reference kernels).

A real rescale factor ``M`` (e.g. ``s_x * s_w / s_out``) is carried as a 32-bit multiplier
``m`` in Q0.31 and a power-of-two exponent: ``M ~= m * 2^(shift - 31)``. Applying it to an int32
accumulator is a rounding doubling high multiply followed by a rounding right shift, no float.

Everything works element-wise on ``torch.int64`` tensors holding values in the int32 range
(int64 so that the 64-bit intermediate products of the reference code are exact), so per-channel
multipliers broadcast like any tensor. Definitions:

* :func:`quantize_multiplier`: TFLite ``QuantizeMultiplier`` (``tensorflow/lite/kernels/internal/
  quantization_util.cc``);
* :func:`saturating_rounding_doubling_high_mul`, :func:`rounding_divide_by_pot`: gemmlowp
  ``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``
  (``gemmlowp/fixedpoint/fixedpoint.h``);
* :func:`multiply_by_quantized_multiplier`: TFLite ``MultiplyByQuantizedMultiplier``
  (``tensorflow/lite/kernels/internal/common.h``).
"""
from __future__ import annotations

import torch

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1


def _long(x, like: torch.Tensor | None = None) -> torch.Tensor:
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=torch.int64, device=device)


def quantize_multiplier(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TFLite ``QuantizeMultiplier``: ``real >= 0`` -> ``(multiplier, shift)`` (int64 tensors shaped
    like ``real``) with ``real ~= multiplier * 2^(shift - 31)`` and ``multiplier`` in
    ``[2^30, 2^31)`` (or 0).

    ``frexp`` gives ``real = frac * 2^shift`` with ``frac`` in ``[0.5, 1)``; ``multiplier =
    round(frac * 2^31)`` (half away from zero, as ``std::round``); a rounding up to ``2^31`` is
    halved with ``shift + 1``; a shift below -31 (every bit would be shifted out) becomes
    multiplier 0, shift 0, as does ``real == 0``.
    """
    real = torch.as_tensor(real).to(torch.float64)
    if not torch.isfinite(real).all() or (real < 0).any():
        raise ValueError("quantize_multiplier takes finite, non-negative reals (apply a sign separately).")
    frac, shift = torch.frexp(real)
    q = torch.floor(frac * float(1 << 31) + 0.5).to(torch.int64)  # std::round for frac >= 0
    shift = shift.to(torch.int64)
    full = q == (1 << 31)
    q = torch.where(full, q // 2, q)
    shift = shift + full.to(torch.int64)
    tiny = shift < -31
    zero = torch.zeros_like(q)
    return torch.where(tiny, zero, q), torch.where(tiny, zero, shift)


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: the high 32 bits of ``2 * a * b``, i.e.
    ``a * b / 2^31`` rounded, for int32-range ``a``, ``b``.

    ``(a * b + nudge) / 2^31`` with C division (truncation toward zero) and ``nudge = 2^30`` for a
    non-negative product, ``1 - 2^30`` for a negative one (ties then go toward +inf); the single
    overflowing case ``INT32_MIN * INT32_MIN`` saturates to ``INT32_MAX``.
    """
    a, b = torch.as_tensor(a, dtype=torch.int64), torch.as_tensor(b, dtype=torch.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b
    nudge = torch.where(ab >= 0, _long(1 << 30, ab), _long(1 - (1 << 30), ab))
    high = torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")
    return torch.where(overflow, _long(INT32_MAX, high), high)


def rounding_divide_by_pot(x: torch.Tensor, exponent) -> torch.Tensor:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded to nearest, ties away from zero
    (arithmetic shift right plus one where the remainder exceeds half, the threshold being one
    higher for negative ``x``).

    ``exponent``: int or int tensor broadcasting with ``x``, ``>= 0``. gemmlowp allows up to 31 on
    int32; on these int64 tensors the same formula holds up to 62.
    """
    x = torch.as_tensor(x, dtype=torch.int64)
    exponent = torch.as_tensor(exponent, dtype=torch.int64, device=x.device)
    if (exponent < 0).any() or (exponent > 62).any():
        raise ValueError("rounding_divide_by_pot: exponent must lie in [0, 62].")
    one = torch.ones((), dtype=torch.int64, device=x.device)
    mask = torch.bitwise_left_shift(one, exponent) - 1
    remainder = torch.bitwise_and(x, mask)
    threshold = torch.bitwise_right_shift(mask, 1) + (x < 0).to(torch.int64)
    return torch.bitwise_right_shift(x, exponent) + (remainder > threshold).to(torch.int64)


def multiply_by_quantized_multiplier(x: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """TFLite ``MultiplyByQuantizedMultiplier``: ``x * multiplier * 2^(shift - 31)`` rounded, in
    integers: ``x << max(shift, 0)``, then :func:`saturating_rounding_doubling_high_mul` by
    ``multiplier``, then :func:`rounding_divide_by_pot` by ``max(-shift, 0)``.

    As in TFLite, ``x << max(shift, 0)`` must stay in the int32 range (the caller's job).
    """
    x = torch.as_tensor(x, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64, device=x.device)
    left, right = shift.clamp(min=0), (-shift).clamp(min=0)
    shifted = x * torch.bitwise_left_shift(torch.ones((), dtype=torch.int64, device=x.device), left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)

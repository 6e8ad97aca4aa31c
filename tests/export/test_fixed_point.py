import pytest
import torch

from lightning_ptq.export.fixed_point import (
    INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)


def _as_real(multiplier, shift):
    return multiplier.double() * torch.exp2(shift.double() - 31)


def test_multiplier_and_shift_reproduce_the_real_over_many_decades():
    torch.manual_seed(0)
    reals = torch.cat([
        10 ** torch.empty(2000, dtype=torch.float64).uniform_(-8, 5),  # tiny to > 1
        torch.tensor([1.0, 0.5, 0.25, 2.0, 3.0, 1 / 3, 0.999999, 1234.5678, 2.0 ** -30], dtype=torch.float64),
    ])
    mult, shift = quantize_multiplier(reals)
    assert mult.dtype == torch.int64 and shift.shape == reals.shape
    assert ((mult >= 1 << 30) & (mult < 1 << 31)).all()  # normalised Q0.31
    rel = (_as_real(mult, shift) - reals).abs() / reals
    assert rel.max() < 1e-9


def test_multiplier_rounding_up_to_two_to_the_31_is_halved_and_tiny_or_zero_reals_give_zero():
    mult, shift = quantize_multiplier(torch.tensor([1 - 2.0 ** -40, 0.5, 1e-12, 0.0], dtype=torch.float64))
    assert mult.tolist() == [1 << 30, 1 << 30, 0, 0]
    assert shift.tolist() == [1, 0, 0, 0]  # frexp(1e-12) has exponent -39 < -31: all bits would be shifted out
    with pytest.raises(ValueError, match="non-negative"):
        quantize_multiplier(torch.tensor([-0.5]))


def test_srdhm_edge_cases():
    a = [INT32_MIN, INT32_MAX, INT32_MIN, 3, -3, 1, -1, -5, 100, -100, 0]
    b = [INT32_MIN, INT32_MAX, INT32_MAX, 1 << 30, 1 << 30, 1 << 30, 1 << 30, 1 << 30, 3 << 29, 3 << 29, INT32_MIN]
    expected = [
        INT32_MAX,  # the one overflowing product saturates
        2147483646,  # (2^31-1)^2 / 2^31 = 2^31 - 2 + 0.5000000005, truncated after the nudge
        -2147483647,  # -(2^31 - 1) - 0.4999999995 (nudge 1 - 2^30, then truncation toward zero)
        2, -1,  # +-1.5: the asymmetric nudge sends ties toward +inf
        1, 0,  # +-0.5
        -2,  # -2.5
        75, -75,  # exact
        0,
    ]
    got = saturating_rounding_doubling_high_mul(torch.tensor(a), torch.tensor(b))
    assert got.tolist() == expected


def test_rounding_divide_by_pot_edge_cases():
    x = [5, -5, 3, -3, -6, -7, -5, -4, 0, INT32_MIN, INT32_MAX, -123, 7]
    e = [1, 1, 1, 1, 2, 2, 2, 2, 5, 31, 31, 0, 3]
    expected = [3, -3, 2, -2, -2, -2, -1, -1, 0, -1, 1, -123, 1]  # to nearest, ties away from zero
    assert rounding_divide_by_pot(torch.tensor(x), torch.tensor(e)).tolist() == expected
    assert rounding_divide_by_pot(torch.tensor([-9, 9, -10, 10]), 2).tolist() == [-2, 2, -3, 3]
    with pytest.raises(ValueError):
        rounding_divide_by_pot(torch.tensor([1]), -1)


def test_multiply_by_quantized_multiplier_hand_cases():
    def mbqm(x, real):
        m, s = quantize_multiplier(torch.tensor([real], dtype=torch.float64))
        return multiply_by_quantized_multiplier(torch.tensor([x]), m, s).item()

    assert mbqm(1000, 0.5) == 500
    assert mbqm(-7, 0.25) == -2  # SRDHM: -3.5 -> -3, then RDBPOT(-3, 1) = -2 (true -1.75)
    assert mbqm(-5, 0.25) == -1  # -2.5 -> -2, then -1 (true -1.25)
    assert mbqm(3, 3.0) == 9  # left shift by 2, then times 0.75
    assert mbqm(12345, 1e-12) == 0  # multiplier 0


def test_multiply_by_quantized_multiplier_is_within_one_of_the_real_product():
    torch.manual_seed(1)
    x = torch.randint(INT32_MIN, INT32_MAX, (5000,), dtype=torch.int64)
    real = 10 ** torch.empty(5000, dtype=torch.float64).uniform_(-9, -1e-3)  # < 1: result stays in int32
    m, s = quantize_multiplier(real)
    got = multiply_by_quantized_multiplier(x, m, s)
    assert ((got.double() - x.double() * real).abs() <= 1).all()
    # Real > 1 (left shift): x small enough that x << shift fits int32.
    real = 10 ** torch.empty(5000, dtype=torch.float64).uniform_(0, 3)
    m, s = quantize_multiplier(real)
    x = torch.randint(-(1 << 20), 1 << 20, (5000,), dtype=torch.int64)
    got = multiply_by_quantized_multiplier(x, m, s)
    assert ((got.double() - x.double() * real).abs() <= 1).all()
    # Per channel: a [C] multiplier broadcasting over [N, C].
    real = torch.tensor([0.1, 0.01, 0.7], dtype=torch.float64)
    m, s = quantize_multiplier(real)
    x = torch.randint(-(1 << 24), 1 << 24, (100, 3), dtype=torch.int64)
    assert ((multiply_by_quantized_multiplier(x, m, s).double() - x.double() * real).abs() <= 1).all()

"""Soft-argmax and its bias compensation, against closed forms and on synthetic distributions."""
import math

import pytest
import torch

from lightning_ptq.keypoints.softargmax import (
    axis_logits, cell_centres, grid_coordinates, gu_compensation, soft_argmax,
)

CELLS, STRIDE = 8, 8.0
POSITIONS = cell_centres(CELLS, STRIDE, dtype=torch.float64)


def test_cell_centres_follow_the_pixel_convention():
    assert cell_centres(4, 2.0).tolist() == [1.0, 3.0, 5.0, 7.0]


def test_plain_expectation_matches_a_hand_computation():
    logits = torch.tensor([0.0, math.log(3.0), 0.0, 0.0], dtype=torch.float64)  # probs 1/6, 1/2, 1/6, 1/6
    positions = cell_centres(4, 1.0, dtype=torch.float64)
    assert soft_argmax(logits, positions).item() == pytest.approx((0.5 + 3 * 1.5 + 2.5 + 3.5) / 6)


def test_reduces_to_gu_et_al_when_the_background_logit_is_zero():
    torch.manual_seed(0)
    logits = torch.zeros(16, CELLS, dtype=torch.float64)
    peak = torch.randint(0, CELLS, (16,))
    logits[torch.arange(16), peak] = torch.rand(16, dtype=torch.float64) * 4 + 1
    ours = soft_argmax(logits, POSITIONS, compensate=True)
    torch.testing.assert_close(ours, gu_compensation(logits, POSITIONS))
    torch.testing.assert_close(ours, POSITIONS[peak])  # one peaked cell on a flat floor: exact


def peaked_logits(x0: float, floor: float, beta: float, noise: float, generator) -> torch.Tensor:
    """Logits whose softmax is a uniform floor plus a peak with its mean at pixel ``x0`` (split
    between the two nearest cells, as a sub-cell position is), the peak cell at about ``beta``,
    plus Gaussian noise, clamped to the cosine bounds [-beta, beta]."""
    j = min(int((x0 - POSITIONS[0]) // STRIDE), CELLS - 2)
    t = (x0 - POSITIONS[j].item()) / STRIDE
    peak = torch.zeros(CELLS, dtype=torch.float64)
    peak[j], peak[j + 1] = 1 - t, t
    amplitude = (math.exp(beta) - math.exp(floor)) / peak.max()
    logits = torch.log(math.exp(floor) + amplitude * peak)
    logits = logits + noise * torch.randn(CELLS, dtype=torch.float64, generator=generator)
    return logits.clamp(-beta, beta)


@pytest.mark.parametrize("x0", [4.0, 5.3, 9.7, 22.5, 31.0, 41.2, 55.0, 58.1, 60.0])  # border and centre
@pytest.mark.parametrize("floor, beta, noise", [
    (-1.0, 3.0, 0.0),    # mild beta, clean floor
    (-2.0, 3.0, 0.3),    # noisy floor
    (0.5, 2.5, 0.1),     # positive floor (cosine of related features), small beta
])
def test_compensation_is_closer_than_the_plain_expectation(x0, floor, beta, noise):
    generator = torch.Generator().manual_seed(int(x0 * 10))
    logits = torch.stack([peaked_logits(x0, floor, beta, noise, generator) for _ in range(32)])
    plain = (soft_argmax(logits, POSITIONS) - x0).abs().mean()
    compensated = (soft_argmax(logits, POSITIONS, compensate=True) - x0).abs().mean()
    if abs(x0 - POSITIONS.mean()) > STRIDE:
        assert compensated < plain
    else:  # near the centre there is little bias to remove; noise may decide
        assert compensated <= 1.05 * plain
    if noise == 0:  # the floor-plus-peak model holds exactly: the peak is recovered
        assert compensated < 1e-6


def test_flat_logits_fall_back_to_the_plain_expectation_without_nan():
    logits = torch.full((3, CELLS), 0.7, dtype=torch.float64, requires_grad=True)
    out = soft_argmax(logits, POSITIONS, compensate=True)
    torch.testing.assert_close(out, torch.full((3,), POSITIONS.mean().item(), dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_compensated_estimate_stays_inside_the_grid_and_has_gradients():
    logits = (torch.randn(64, CELLS, dtype=torch.float64) * 3).requires_grad_()
    out = soft_argmax(logits, POSITIONS, compensate=True)
    assert (out >= POSITIONS[0] - 1e-9).all() and (out <= POSITIONS[-1] + 1e-9).all()
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_axis_logits_are_means_over_the_other_axis_and_grid_coordinates_use_them():
    cells = torch.zeros(1, 1, 4, 8)
    cells[0, 0, 1, 6] = 40.0  # a very peaked cell at row 1, column 6
    lx, ly = axis_logits(cells)
    assert lx.shape == (1, 1, 8) and ly.shape == (1, 1, 4)
    assert lx[0, 0, 6].item() == pytest.approx(10.0) and ly[0, 0, 1].item() == pytest.approx(5.0)
    xy, gx, gy = grid_coordinates(cells, stride=2.0, compensate=True)
    torch.testing.assert_close((gx, gy), (lx, ly))
    torch.testing.assert_close(xy[0, 0], torch.tensor([13.0, 3.0]))

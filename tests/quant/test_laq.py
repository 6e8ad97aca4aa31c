import pytest
import torch

from lightning_ptq.quant import UniformQuantizer
from lightning_ptq.quant.laq import LogAffineQuantizer


def _laplace(channels=16, n=2000, seed=0):
    torch.manual_seed(seed)
    return torch.distributions.Laplace(0.1, 0.5).sample((channels, n))


@pytest.mark.parametrize("bits", [4, 5])
def test_laq_beats_mse_optimal_uniform_on_laplace(bits):
    x = _laplace()
    laq = LogAffineQuantizer(bits, channel_axis=0, num_channels=16)
    laq.init_from(x)
    uniform = UniformQuantizer(bits, symmetric=False, channel_axis=0, num_channels=16, init="mse")
    uniform.init_from(x)
    laq_err, uni_err = (laq(x) - x).pow(2).mean(), (uniform(x) - x).pow(2).mean()
    assert laq_err < 0.8 * uni_err


def test_levels_are_mu_plus_minus_geometric_steps():
    laq = LogAffineQuantizer(4, learnable=False, init_k=1.0)
    laq.init_from(_laplace(1))
    out = laq(_laplace(1, seed=1))
    mu, s = laq.mu.item(), torch.exp2(laq.log2_s).squeeze(1)
    levels = torch.cat([
        torch.tensor([mu]),
        mu + s[0] * torch.exp2(torch.arange(1, 8) - 7.0),
        mu - s[1] * torch.exp2(torch.arange(1, 8) - 7.0),
    ])
    dist = (out.reshape(-1, 1) - levels).abs().min(dim=1).values
    assert dist.max() < 1e-5  # every output is one of the 2^4 - 1 levels
    assert len(torch.unique(out.round(decimals=5))) <= 15


def test_gradients_reach_every_learnable_parameter():
    x = _laplace(4, 500)
    laq = LogAffineQuantizer(4, channel_axis=0, num_channels=4)
    laq.init_from(x)
    inp = (x * 1.3).requires_grad_()  # some values beyond the clipping point
    (laq(inp) - x).pow(2).sum().backward()
    for name in ("mu", "log2_s", "log2_k"):
        grad = getattr(laq, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert inp.grad is not None and inp.grad.abs().sum() > 0


def test_disabled_laq_is_identity_and_state_round_trips():
    x = _laplace(3, 100)
    laq = LogAffineQuantizer(4, channel_axis=0, num_channels=3)
    laq.init_from(x)
    fresh = LogAffineQuantizer(4, channel_axis=0, num_channels=3)
    fresh.load_state_dict(laq.state_dict())
    assert torch.equal(fresh(x), laq(x))
    laq.disable()
    assert torch.equal(laq(x), x)


def test_fixed_k_is_not_learned():
    laq = LogAffineQuantizer(4, learn_k=False, init_k=1.0)
    laq.init_from(_laplace(1))
    assert all(p is not laq.log2_k for p in laq.learnable_parameters()) and not laq.log2_k.requires_grad
    torch.testing.assert_close(laq.log2_k, torch.zeros(2, 1))


def test_shift_exact_levels_are_powers_of_two_times_a_scale():
    x = _laplace(4)
    laq = LogAffineQuantizer(4, channel_axis=0, num_channels=4, shift_exact=True)
    laq.init_from(x)
    steps = laq.shift_steps()
    assert steps is not None and steps.shape == (2, 4) and steps.min() >= 1 and steps.max() <= 4
    assert all(p is not laq.log2_k for p in laq.learnable_parameters()) and not laq.log2_k.requires_grad
    # Every quantized value is mu +- s_side * 2^(n (j - L)) with a whole exponent.
    out = laq(x)
    d = (out - laq.mu[:, None]).abs()
    below = out < laq.mu[:, None]
    log2_s = torch.where(below, laq.log2_s[1][:, None], laq.log2_s[0][:, None])
    exponent = torch.log2(d[d > 0]) - log2_s[d > 0]
    assert torch.allclose(exponent, exponent.round(), atol=1e-4)


def test_shift_exact_and_a_fixed_k_exclude_each_other():
    with pytest.raises(ValueError, match=r"shift_exact=True chooses k itself \(1/n\); drop init_k"):
        LogAffineQuantizer(4, init_k=1.0, shift_exact=True)

import pytest
import torch

from lightning_ptq.quant import UniformQuantizer
from lightning_ptq.quant.ranges import init_range


def test_disabled_quantizer_is_identity():
    q = UniformQuantizer(4, symmetric=False)
    x = torch.randn(2, 3, 4, 4)
    q.init_from(x)
    q.disable()
    assert torch.equal(q(x), x)


def test_uninitialised_quantizer_passes_through():
    q = UniformQuantizer(4, symmetric=True, channel_axis=0, num_channels=3)
    x = torch.randn(3, 5)
    assert torch.equal(q(x), x)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_observe_then_finalize_sets_minmax_range(bits):
    q = UniformQuantizer(bits, symmetric=False, init="minmax")
    q.enable_observation()
    batches = [torch.rand(4, 10) * 3 - 1, torch.rand(4, 10) * 5 - 2]
    for b in batches:
        assert torch.equal(q(b), b)  # observing does not change values
    q.finalize()
    lo = min(b.min() for b in batches)
    hi = max(b.max() for b in batches)
    expected_scale = (hi - lo) / (2**bits - 1)
    torch.testing.assert_close(q.scale, expected_scale.reshape(1))
    assert q.is_active and not q.observer_enabled
    out = q(batches[1])
    assert (out - batches[1]).abs().max() <= expected_scale / 2 + 1e-6


def test_mse_init_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((1, 20000))
    errs = {}
    for method in ("minmax", "mse"):
        scale, zp = init_range(x, method, 4, symmetric=True)
        deq = torch.clamp(torch.round(x / scale[:, None]), -8, 7) * scale[:, None]
        errs[method] = (deq - x).pow(2).mean().item()
    assert errs["mse"] < 0.5 * errs["minmax"]


def test_percentile_clips_outliers():
    x = torch.cat([torch.randn(1, 10000), torch.tensor([[100.0]])], dim=1)
    s_pct, _ = init_range(x, "percentile", 8, symmetric=True, percentile=99.9)
    s_max, _ = init_range(x, "minmax", 8, symmetric=True)
    assert s_pct.item() < s_max.item() / 10


def test_per_channel_ranges_differ_per_channel():
    w = torch.randn(4, 32) * torch.tensor([[0.1], [1.0], [5.0], [20.0]])
    q = UniformQuantizer(8, symmetric=True, channel_axis=0, num_channels=4, init="minmax")
    q.init_from(w)
    torch.testing.assert_close(q.scale, w.abs().amax(dim=1) / 127)
    assert (q(w) - w).abs().amax(dim=1).le(q.scale / 2 + 1e-7).all()


def test_gradients_reach_scale_and_zero_point():
    q = UniformQuantizer(4, symmetric=False, init="minmax")
    x = torch.randn(8, 16, requires_grad=True)
    q.init_from(x)
    q(x * 1.5).pow(2).sum().backward()  # values beyond the range give zero-point gradients
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0
    assert q.zero_point.grad is not None and q.zero_point.grad.abs().sum() > 0
    assert x.grad is not None


def test_finalize_without_observation_raises():
    q = UniformQuantizer(4, symmetric=False)
    q.enable_observation()
    with pytest.raises(RuntimeError, match="observed no values"):
        q.finalize()


def test_state_dict_round_trip():
    q = UniformQuantizer(4, symmetric=True, channel_axis=0, num_channels=3)
    q.init_from(torch.randn(3, 9))
    fresh = UniformQuantizer(4, symmetric=True, channel_axis=0, num_channels=3)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, 9)
    assert fresh.is_active
    assert torch.equal(fresh(x), q(x))

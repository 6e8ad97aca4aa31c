import pytest
import torch

from lightning_ptq.quant import NonFiniteObservationError, SampleObserver, UniformQuantizer


def test_observer_keeps_every_batch_extremes_and_at_most_max_samples():
    torch.manual_seed(0)
    obs = SampleObserver(channel_axis=1, max_samples=100)
    batches = [torch.randn(8, 3, 16), torch.randn(8, 3, 16) * 4]
    for b in batches:
        assert obs(b) is b  # values pass through unchanged
    rows = obs.rows()
    assert rows.shape[0] == 3
    assert rows.shape[1] == 2 * 2 + 100  # two extremes per batch, the budget spent on the first
    every = torch.cat([b.transpose(0, 1).reshape(3, -1) for b in batches], dim=1)
    torch.testing.assert_close(rows.amin(dim=1), every.amin(dim=1))
    torch.testing.assert_close(rows.amax(dim=1), every.amax(dim=1))


def test_observer_rejects_non_finite_values_and_says_which_observer():
    obs = SampleObserver()
    with pytest.raises(NonFiniteObservationError) as err:
        obs(torch.tensor([1.0, float("nan")]))
    assert err.value.observer is obs
    with pytest.raises(RuntimeError, match="recorded no values"):
        obs.rows()


def test_the_quantizer_observes_through_its_observer_which_adds_nothing_to_checkpoints():
    q = UniformQuantizer(4, symmetric=False, channel_axis=0, num_channels=2, init="minmax", max_samples=64)
    keys_before = set(q.state_dict())
    q.enable_observation()
    x = torch.tensor([[0.0, 3.0], [-1.0, 1.0]])
    q(x)
    assert q.observer.has_values
    q.finalize()
    assert not q.observer.has_values  # working memory released once the range is set
    torch.testing.assert_close(q.scale, torch.tensor([3.0, 2.0]) / 15)
    assert set(q.state_dict()) == keys_before == {"fake_quant_enabled", "observer_enabled", "initialized", "scale",
                                                   "zero_point"}

"""Range calibration on two processes (gloo, CPU): every rank observes its own shard of the
calibration batches, and the observers merge what all ranks saw before setting the ranges, so
both ranks hold the same quantizer parameters, those of one process calibrating on every batch."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_ptq import QuantConfig, quantize
from lightning_ptq.calib import calibrate_ranges

from tiny import tiny_net

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def _batches():
    torch.manual_seed(3)
    return [torch.rand(4, 3, 12, 12) * (1 + i) for i in range(4)]  # batches of different ranges


def _quantized(a_init):
    return quantize(tiny_net(), QuantConfig(w_bits=4, a_bits=4, a_init=a_init, act_samples=1 << 20))


INITS = ("minmax", "percentile", "mse")


def _rank(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for a_init in INITS:
            q = _quantized(a_init)
            calibrate_ranges(q, _batches()[rank::world], progress=False)  # this rank's shard
            out[(rank, a_init)] = {k: v.clone() for k, v in q.state_dict().items()}
    finally:
        dist.destroy_process_group()


def test_two_ranks_set_identical_ranges_equal_to_one_process_on_all_batches(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(2, tmp_path / "init", out), nprocs=2, join=True)
        states = dict(out)
    for a_init in INITS:
        reference = _quantized(a_init)
        calibrate_ranges(reference, _batches(), progress=False)
        for key, value in reference.state_dict().items():
            first, second = states[(0, a_init)][key], states[(1, a_init)][key]
            assert torch.equal(first, second), (a_init, key)  # max abs difference 0 between the ranks
            torch.testing.assert_close(first, value, msg=f"{a_init} {key}")  # as one process on every batch

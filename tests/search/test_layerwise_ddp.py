"""The per-layer search on two processes (gloo on CPU): the ranks share every round of
evaluations and end with the search one process makes, on every rank."""
import copy
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_ptq.core import distributed
from lightning_ptq.search import SearchConfig, StagedEvaluator, search_layers

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")

CONFIG = SearchConfig(threshold=0.001, max_drop=0.0)  # goal: the float metric, so targets are searched


class CountingEvaluator(StagedEvaluator):
    """A staged evaluator that counts the evaluations this process made."""

    calls = 0

    def __call__(self, model, changed=None):
        self.calls += 1
        return super().__call__(model, changed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search(qmodel, calib, val) -> dict:
    evaluator = CountingEvaluator(val)
    result = search_layers(qmodel, calib, evaluator, CONFIG, progress=False)
    probe = val[0][0]
    return {"result": result.to_dict(), "calls": evaluator.calls, "output": qmodel(probe).tolist()}


def _rank(rank: int, world: int, port: int, qmodel, calib, val, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # spawn hands the processes one model in shared memory: each needs its own
        found = _search(copy.deepcopy(qmodel), calib, val)
        found["world"] = distributed.world_size()
    finally:
        dist.destroy_process_group()
    with open(f"{out}/world{world}_rank{rank}.json", "w") as f:
        json.dump(found, f)


def _without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "evaluations")}


def test_two_processes_find_the_search_of_one_and_share_its_evaluations(blobs_task, quantized, tmp_path):
    model, calib, val = blobs_task
    # one process and two, each a fresh process with one thread: the same sums in the same order
    for world in (1, 2):
        mp.spawn(_rank, args=(world, _free_port(), quantized(model, calib), calib, val, str(tmp_path)),
                 nprocs=world)
    one = json.loads((tmp_path / "world1_rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"world2_rank{r}.json").read_text()) for r in (0, 1)]

    assert one["result"]["final_metric"] > one["result"]["start_metric"]  # the search changed the model
    for two in ranks:
        assert one["world"] == 1 and two["world"] == 2
        # the same choices, layer by layer, and the same model
        assert _without_timing(two["result"]) == _without_timing(one["result"])
        torch.testing.assert_close(torch.tensor(two["output"]), torch.tensor(one["output"]))
        evaluations = two["result"]["evaluations"]
        assert evaluations["sensitivity"] == one["result"]["evaluations"]["sensitivity"]
        assert evaluations["search"] == one["result"]["evaluations"]["search"]  # counted as one process counts
        assert evaluations["discarded"] >= 0 and one["result"]["evaluations"]["discarded"] == 0
    # each rank made a share of the evaluations, not all of them
    assert max(r["calls"] for r in ranks) < 0.7 * one["calls"]
    assert sum(r["calls"] for r in ranks) >= one["calls"]

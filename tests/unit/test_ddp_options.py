"""The DDP wrapping of a multi-worker stage (`train/loop.py`): gradients live in DDP's buckets, and with
`srcluster.ddp_bf16_gradients` they travel in bf16. Two gloo CPU processes, each a rank of one process group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import start_processes

from srcluster.train.loop import DDP_OPTIONS, with_gradient_compression

pytestmark = pytest.mark.usefixtures("single_thread")


def gradients(rank: int, world: int, init: str, bf16: bool, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = torch.nn.Linear(64, 1)
        ddp = with_gradient_compression(torch.nn.parallel.DistributedDataParallel(net, **DDP_OPTIONS), bf16)
        x = torch.linspace(-1, 1, 64).add(rank / 3.0 + 1 / 7).view(1, 64)  # a different input per rank
        ddp(x).sum().backward()
        grad = net.weight.grad
        assert grad is not None
        torch.save({"grad": grad.clone(), "x": x}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("bf16", [False, True])
def test_ranks_average_their_gradients_in_fp32_or_bf16(tmp_path, bf16):
    init = f"file://{tmp_path / 'rendezvous'}"
    start_processes(gradients, args=(2, init, bf16, tmp_path), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = (ranks[0]["x"] + ranks[1]["x"]) / 2  # d(sum(w.x + b))/dw = x, averaged over the ranks
    for result in ranks:
        if bf16:
            torch.testing.assert_close(result["grad"], expected, rtol=1e-2, atol=1e-2)
            assert not torch.equal(result["grad"], expected)  # it did travel in bf16
        else:
            torch.testing.assert_close(result["grad"], expected, rtol=0, atol=1e-6)

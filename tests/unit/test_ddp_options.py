"""The DDP wrapping of a multi-worker stage (`train/loop.py`): gradients live in DDP's buckets, with
`srcluster.ddp_bf16_gradients` they travel in bf16, and the job's find_unused_parameters reaches DDP. Two gloo CPU
processes, each a rank of one process group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import start_processes

from helpers.jobs import tiny_job
from srcluster.config import parse_job
from srcluster.train.loop import DDP_OPTIONS, ddp_options, with_gradient_compression

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


class PartlyUsed(torch.nn.Module):
    """A generator whose forward leaves one layer unused, as some architectures' options do."""

    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def two_steps(rank: int, world: int, init: str, options: dict, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(PartlyUsed(), **options)
        outcome = "ok"
        try:
            for _ in range(2):  # DDP notices unused parameters when the next step begins
                ddp(torch.ones(1, 4)).sum().backward()
        except RuntimeError as exc:
            outcome = str(exc).splitlines()[0]
        (out / f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("find", [False, True])
def test_find_unused_parameters_reaches_ddp(tmp_path, find):
    job = parse_job(tiny_job(find_unused_parameters=find))
    init = f"file://{tmp_path / 'rendezvous'}"
    start_processes(two_steps, args=(2, init, ddp_options(job), tmp_path), nprocs=2, start_method="fork")
    outcomes = {(tmp_path / f"rank{r}.txt").read_text() for r in range(2)}
    if find:
        assert outcomes == {"ok"}
    else:
        assert all("unused" in o or "finished reduction" in o for o in outcomes), outcomes

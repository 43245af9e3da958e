"""Validation shared by every rank (issue #16, item 2): 2 and 3 gloo CPU processes each upscale and score their share of
two validation sets, and every rank gets the metrics one process gets alone; rank 0's grids, page and outputs hold
every image, exactly as one process makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch.multiprocessing.spawn import start_processes

from helpers.images import PHOTO, save
from srcluster.config import parse_job
from srcluster.errors import SrclusterError
from srcluster.page import ComparePage
from srcluster.train.validate import GRID_CROP, Validator, build_validator, owners

pytestmark = pytest.mark.usefixtures("single_thread")

# HR sizes (even, scale 2), all different so each LR shape names its image; set "val" has 3, set "val_2" has 2
SIZES = {"val": [(40, 48), (32, 56), (24, 24)], "val_2": [(48, 40), (36, 28)]}


def job_data(root: Path) -> dict[str, Any]:
    for key, sizes in SIZES.items():
        for index, (h, w) in enumerate(sizes):
            save(root / key / f"{key}_{index}.png", PHOTO[30 * index : 30 * index + h, 50 : 50 + w])
    return {
        "name": "sharded",
        "scale": 2,
        "datasets": {
            "train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2},
            "val": {"name": "First", "dataroot_gt": str(root / "val")},
            "val_2": {"name": "Second", "dataroot_gt": str(root / "val_2")},
        },
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 2, "losses": [{"type": "charbonnierloss"}]},
        "val": {
            "val_freq": 2,
            "metrics_enabled": True,
            "metrics": {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}},
        },
        "srcluster": {"workers": 1},
    }


def tiny_net() -> torch.nn.Module:
    """The same weights in every process: a 3x3 conv to 12 channels and a x2 pixel shuffle."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))


def validate_twice(validator: Validator, folder: Path) -> dict[str, Any]:
    """Two validations (the second reuses the bicubic baseline) and the page after them, with every LR shape the net
    was given."""
    net = tiny_net()
    seen: list[tuple[int, int]] = []
    net.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    metrics = [validator(net, folder / f"val_{i}.png") for i in (1, 2)]
    page = validator.write_page("sharded", 2, folder)
    outputs = {label: [(image.name, sr) for image, sr, _ in rows] for label, rows in validator.outputs.items()}
    return {"metrics": metrics, "seen": seen, "outputs": outputs, "page": page}


def worker(rank: int, world: int, data: dict[str, Any], root: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank, world_size=world)
    try:
        validator = build_validator(parse_job(data), rank, world)
        assert validator is not None
        result = validate_twice(validator, root / f"rank{rank}")
        torch.save(result, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def lr_shapes() -> list[tuple[int, int]]:
    return [(h // 2, w // 2) for sizes in SIZES.values() for h, w in sizes]


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_single_process_metrics_from_its_own_share(tmp_path, world):
    data = job_data(tmp_path / "images")
    alone = build_validator(parse_job(data))
    assert alone is not None
    expected = validate_twice(alone, tmp_path / "alone")

    shared = tmp_path / "shared"
    shared.mkdir()
    # forked, not spawned: a spawned child spends ~10 s importing torch, torchvision and srcluster again; one thread
    # in each child, as DataLoader workers fork
    start_processes(worker, args=(world, data, shared), nprocs=world, join=True, start_method="fork")
    results = [torch.load(shared / f"rank{rank}.pt", weights_only=False) for rank in range(world)]

    for result in results:  # identical on every rank (the same reduced values), equal to one process's means
        assert result["metrics"] == results[0]["metrics"]
        for got, want in zip(result["metrics"], expected["metrics"], strict=True):
            assert set(got) == set(want) and {"val_psnr", "val_bicubic_ssim", "metrics/Second/psnr"} <= set(got)
            assert got == {key: pytest.approx(value, abs=1e-6) for key, value in want.items()}

    # each rank upscaled only its share (one forward per image: no tiles), both times; together every image once
    shapes = lr_shapes()
    owner = owners([h * w for h, w in shapes], world)
    for rank, result in enumerate(results):
        share = [shape for shape, r in zip(shapes, owner, strict=True) if r == rank]
        assert share and result["seen"] == share * 2
    assert sorted(s for result in results for s in result["seen"]) == sorted(shapes * 2)

    # rank 0 holds every image's output, grid and page, exactly as one process makes them; the others make none
    first = results[0]
    assert first["outputs"].keys() == expected["outputs"].keys() == {"First", "Second"}
    for label, rows in expected["outputs"].items():
        assert [name for name, _ in first["outputs"][label]] == [name for name, _ in rows]
        assert all(got.equal(want) for (_, got), (_, want) in zip(first["outputs"][label], rows, strict=True))
    for grid in ("val_1.png", "val_2.png", "val_2_val_2.png"):
        got, want = (np.asarray(Image.open(folder / grid)) for folder in (shared / "rank0", tmp_path / "alone"))
        assert np.array_equal(got, want)
    assert np.asarray(Image.open(shared / "rank0" / "val_2.png")).shape[0] == 3 * GRID_CROP  # the first set's 3
    page, want_page = ComparePage.read(first["page"]), ComparePage.read(expected["page"])
    assert len(page.pictures) == 5 * 4  # every image: bicubic, LR, HR and the checkpoint
    assert {key: (p.tiles, p.metrics) for key, p in page.pictures.items()} == {
        key: (p.tiles, pytest.approx(p.metrics, abs=1e-6)) for key, p in want_page.pictures.items()
    }
    for rank, result in enumerate(results[1:], start=1):
        assert result["outputs"] == {} and result["page"] is None
        assert not list((shared / f"rank{rank}").glob("*.png"))


def test_shares_balance_by_pixels_and_cover_every_image():
    costs = [100, 10, 10, 10, 60, 50, 40]
    owner = owners(costs, 3)
    loads = [sum(c for c, r in zip(costs, owner, strict=True) if r == rank) for rank in range(3)]
    assert owner == owners(costs, 3) and sorted(loads) == [90, 90, 100]  # the largest image alone on its rank
    assert owners(costs, 1) == [0] * len(costs) and sorted(owners([5, 5], 4)) == [0, 1]


def test_a_shared_validator_without_a_process_group_names_it(tmp_path):
    validator = build_validator(parse_job(job_data(tmp_path)), rank=1, world=2)
    assert validator is not None
    with pytest.raises(SrclusterError, match=r"validation over 2 ranks needs torch\.distributed initialised"):
        validator(tiny_net())

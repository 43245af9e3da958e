"""Validation as traiNNer-redux runs it: every validation set (`datasets.val`, `val_2`, ...), each image upscaled whole
from its paired LR (`dataroot_lq`; MATLAB-compatible bicubic of the HR only when a set has none), metrics per image on
8-bit images, averaged per set; plus a comparison grid (bicubic | model | HR) per set that a person can look at, and
the stage's comparison page that grows by one checkpoint per validation (`Validator.write_page`; both `val.save_img`).

The model upscales through the one inference path, `srcluster.infer.upscaler.tiled_upscale`, on `val.tile_size` tiles
(0: whole images) overlapping by `val.tile_overlap`, blended as traiNNer-redux blends them (`srcluster.val_tiling`:
redux; or srcluster's context tiles), under the training's autocast (`use_amp`, `amp_bf16`) as
traiNNer-redux validates. PSNR/SSIM crop `crop_border` pixels (default: the scale); LPIPS, DISTS and TOPIQ score whole
images, as in traiNNer-redux.

Metric keys: the first set reports `val_<metric>` (and `val_bicubic_<metric>`), which the best checkpoint, the plateau
stop and searches read; every set also reports traiNNer-redux's `metrics/<dataset name>/<metric>`.

Under Ray Train every rank validates: each upscales and scores its share of the images (`owners`: balanced by pixels),
the per-image scores are summed over the ranks (each image's row comes from one rank, so the sum is exact) and every
rank averages the same values in the same order as one process would, so all ranks see identical metrics and take the
same best/plateau decisions. No rank validates alone while the others wait in a collective. Only rank 0 makes the grids
and the page: it receives the other ranks' model outputs, one image per rank at a time.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import distributed as dist
from torch import nn

from srcluster.components import perceptual
from srcluster.config import Job, Metric, ValDataset
from srcluster.data.stream import iter_images, iter_pairs
from srcluster.degrade.resize import bicubic_downscale, imresize
from srcluster.errors import SrclusterError
from srcluster.infer.upscaler import Tiling, tiled_upscale
from srcluster.page import STAGE_PAGE_LIMIT, STAGE_PAGE_NAME, ComparePage, Source
from srcluster.train.step import amp_context

Autocast = Callable[[torch.device], AbstractContextManager]

GRID_CROP = 96  # the side of each image's centre crop in a comparison grid (bicubic | model | HR)


@dataclass
class ValImage:
    name: str
    hr: torch.Tensor  # uint8 (3, H, W), H and W = scale x the LR's
    lr: torch.Tensor  # uint8 (3, H/s, W/s): the set's own LR, or the bicubic of the HR when it has none


@dataclass
class ValSet:
    """One validation set: its key under `datasets:` (val, val_2, ...), the name its metrics are logged under, its
    images."""

    key: str
    label: str
    images: list[ValImage]
    bicubic_scores: dict[str, float] | None = None  # the bicubic baseline, the same at every validation: scored once
    bicubic_per_image: list[dict[str, float]] | None = None  # its per-image scores (the page shows them)


def rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def prepare(images, scale: int) -> list[ValImage]:
    """HR-only images -> ValImages with the MATLAB-compatible bicubic LR (HR mod-cropped to a multiple of `scale`)."""
    out = []
    for name, image in images:
        whole = rgb(image)
        h, w = (whole.shape[1] // scale) * scale, (whole.shape[2] // scale) * scale
        hr = whole[:, :h, :w].contiguous()
        out.append(ValImage(name, hr, bicubic_downscale(hr, scale)))
    return out


def load_set(dataset: ValDataset, scale: int) -> list[ValImage]:
    """A validation set's images from all its folders: paired with `dataroot_lq` when given, else bicubic LR."""
    if dataset.dataroot_lq is None:
        return prepare(iter_images(dataset.dataroot_gt), scale)
    pairs = iter_pairs(dataset.dataroot_gt, dataset.dataroot_lq, scale=scale)
    return [ValImage(name, rgb(hr).contiguous(), rgb(lr).contiguous()) for name, hr, lr in pairs]


def to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    # float32 before quantising, as traiNNer-redux's tensor2img: a bf16 output has too few bits for 255 levels
    return x.float().clamp(0, 1).mul(255).round().to(torch.uint8)


@torch.no_grad()
def upscale(
    net: nn.Module,
    lr: torch.Tensor,
    scale: int,
    tile: int = 0,
    overlap: int = 0,
    autocast: Autocast | None = None,
    tiling: Tiling = "redux",
) -> torch.Tensor:
    """(3,h,w) uint8 -> (3,h*s,w*s) uint8, run on the model's device in `tile` x `tile` blocks (0: in one pass) of the
    given tiling, inside `autocast(device)` when given."""
    device = next(net.parameters()).device
    with autocast(device) if autocast is not None else contextlib.nullcontext():
        sr = tiled_upscale(net, to_float(lr, device)[None], scale, tile, overlap, tiling=tiling)
    return to_uint8(sr)[0].cpu()


def build_metrics(specs: dict[str, Metric], scale: int) -> dict[str, perceptual.Metric]:
    """The job's `val.metrics`, built once; a missing weights file fails here, not at the first validation."""
    built = {}
    for name, spec in specs.items():
        options = spec.options()
        if spec.crops_border:
            options["crop_border"] = scale if spec.crop_border is None else spec.crop_border
        if spec.kind in perceptual.Y_CHANNEL_METRICS:
            options["test_y_channel"] = spec.test_y_channel
        built[name] = perceptual.build_metric(spec.kind, **options)
    return built


def score(sr: torch.Tensor, hr: torch.Tensor, metrics: dict[str, perceptual.Metric]) -> dict[str, float]:
    return {name: float(metric(sr[None], hr[None])[0]) for name, metric in metrics.items()}


def bicubic(image: ValImage, scale: int) -> torch.Tensor:
    return to_uint8(imresize(image.lr.float()[None] / 255, scale, kernel="bicubic"))[0]


def mean(scores: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(s[name] for s in scores) / len(scores) for name in (scores[0] if scores else {})}


def owners(costs: list[int], world: int) -> list[int]:
    """The rank that upscales and scores each image, by its cost (LR pixels): the largest first, each to the rank with
    the least work so far (ties: the lower rank). Deterministic, so every rank computes the same shares."""
    load = [0] * world
    owner = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[index] = rank
        load[rank] += costs[index]
    return owner


def sum_over_ranks(table: torch.Tensor, world: int, device: torch.device) -> torch.Tensor:
    """`table` summed over the ranks (all_reduce SUM on the training device: gloo on CPU, NCCL on GPU)."""
    if world == 1:
        return table
    shared = table.to(device)
    dist.all_reduce(shared, op=dist.ReduceOp.SUM)
    return shared.cpu()


def gather_to_rank0(
    mine: dict[int, torch.Tensor],
    shapes: list[torch.Size],
    owner: list[int],
    rank: int,
    world: int,
    device: torch.device,
) -> dict[int, torch.Tensor]:
    """Every image's uint8 output on rank 0 (the others get {}), each from the rank in `owner`. In turns: turn k
    gathers every rank's k-th image, padded to the turn's largest, so rank 0 holds at most `world` images in flight on
    the device, and only the training group's own collective (gather) is used."""
    if world == 1:
        return mine
    shares = [[index for index, r in enumerate(owner) if r == each] for each in range(world)]
    got = dict(mine) if rank == 0 else {}
    for turn in range(max(len(share) for share in shares)):
        members = [share[turn] if turn < len(share) else None for share in shares]
        size = max(shapes[index].numel() for index in members if index is not None)
        buffer = torch.zeros(size, dtype=torch.uint8, device=device)
        own = members[rank]
        if own is not None:
            buffer[: shapes[own].numel()] = mine[own].flatten().to(device)
        received = [torch.empty_like(buffer) for _ in range(world)] if rank == 0 else None
        dist.gather(buffer, received, dst=0)
        if received is not None:
            for source, index in enumerate(members):
                if index is not None and source != 0:
                    got[index] = received[source][: shapes[index].numel()].view(shapes[index]).cpu()
    return got


@dataclass
class Validator:
    """A stage's validation: its sets and metrics, built once (on every rank), and how the job asks to run it. With
    `world` > 1 (torch.distributed initialised), this process is `rank` and validates its share of the images."""

    sets: list[ValSet]
    metrics: dict[str, perceptual.Metric]
    scale: int
    tile_size: int = 0
    tile_overlap: int = 0
    save_img: bool = True  # False: no comparison grid is made
    autocast: Autocast | None = field(default=None, repr=False)  # the training's autocast; None: float32
    page: ComparePage | None = field(default=None, repr=False)  # the stage's comparison page (with save_img)
    outputs: dict[str, list] = field(default_factory=dict, repr=False)  # the last call's outputs per set label
    tiling: Tiling = "redux"  # srcluster.val_tiling
    rank: int = 0
    world: int = 1
    _owner: list[int] | None = field(default=None, init=False, repr=False)  # each image's rank (`owners`), once
    _bicubic_crops: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, net: nn.Module, grid_path: Path | None = None) -> dict[str, float]:
        """The metrics of every set for `net` (see the module's docstring for their keys), the same on every rank. With
        save_img, rank 0 keeps every image's output in `outputs` and writes the first set's grid to `grid_path` and
        each other set's beside it, named `<stem>_<set key>.png`."""
        if self.world > 1 and not (
            dist.is_available() and dist.is_initialized() and dist.get_world_size() == self.world
        ):
            raise SrclusterError(
                f"validation over {self.world} ranks needs torch.distributed initialised on {self.world}"
            )
        entries = [(valset, image) for valset in self.sets for image in valset.images]  # all sets, in order
        if self._owner is None:
            self._owner = owners([image.lr.shape[1] * image.lr.shape[2] for _, image in entries], self.world)
        device = next(net.parameters()).device
        names = list(self.metrics)
        count = len(names)
        table, mine = self.score_share(net, entries, names)
        table = sum_over_ranks(table, self.world, device)
        if not torch.equal(table[:, -1], torch.ones(len(entries), dtype=torch.float64)):
            raise SrclusterError(f"validation: the {self.world} ranks disagree on which of them scores which image")
        outputs: dict[int, torch.Tensor] = {}
        if self.save_img:
            shapes = [
                torch.Size((3, image.lr.shape[1] * self.scale, image.lr.shape[2] * self.scale)) for _, image in entries
            ]
            outputs = gather_to_rank0(mine, shapes, self._owner, self.rank, self.world, device)

        def row(index: int, first: int) -> dict[str, float]:
            return dict(zip(names, table[index, first : first + count].tolist(), strict=True))

        out: dict[str, float] = {}
        self.outputs = {}
        start = 0
        for set_index, valset in enumerate(self.sets):
            indices = range(start, start + len(valset.images))
            start += len(valset.images)
            per_image = [row(index, 0) for index in indices]
            if valset.bicubic_scores is None:
                valset.bicubic_per_image = [row(index, count) for index in indices]
                valset.bicubic_scores = mean(valset.bicubic_per_image)
            if self.rank == 0 and self.save_img:
                shown = zip(indices, valset.images, per_image, strict=True)
                self.outputs[valset.label] = [(image, outputs[index], scores) for index, image, scores in shown]
                if grid_path is not None and valset.images:
                    grid = grid_path if set_index == 0 else grid_path.with_name(f"{grid_path.stem}_{valset.key}.png")
                    self.write_grid(valset, [outputs[index] for index in indices], grid)
            scores = mean(per_image) | {f"bicubic_{name}": value for name, value in valset.bicubic_scores.items()}
            if set_index == 0:
                out |= {f"val_{name}": value for name, value in scores.items()}
            out |= {f"metrics/{valset.label}/{name}": value for name, value in scores.items()}
        return out

    def score_share(
        self, net: nn.Module, entries: list[tuple[ValSet, ValImage]], names: list[str]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """This rank's images upscaled and scored: a table with one row per image of `entries` (the model's scores in
        `names` order, the bicubic baseline's when its set has none yet, then 1 for "scored here"; the rows of the
        other ranks' images stay zero, so summing the ranks' tables gives each image's values exactly), and the
        outputs by image index when the grid and page need them."""
        assert self._owner is not None
        count = len(names)
        table = torch.zeros(len(entries), 2 * count + 1, dtype=torch.float64)
        mine: dict[int, torch.Tensor] = {}
        was_training = net.training
        net.eval()
        for index, (valset, image) in enumerate(entries):
            if self._owner[index] != self.rank:
                continue
            sr = upscale(net, image.lr, self.scale, self.tile_size, self.tile_overlap, self.autocast, self.tiling)
            model = score(sr, image.hr, self.metrics)
            table[index, :count] = torch.tensor([model[name] for name in names], dtype=torch.float64)
            if valset.bicubic_scores is None:
                baseline = score(bicubic(image, self.scale), image.hr, self.metrics)
                table[index, count : 2 * count] = torch.tensor([baseline[n] for n in names], dtype=torch.float64)
            table[index, -1] = 1
            if self.save_img:
                mine[index] = sr
        net.train(was_training)
        return table, mine

    def write_grid(self, valset: ValSet, outputs: list[torch.Tensor], path: Path) -> Path:
        """One row per image of the set: the centre crops of its bicubic upscale (made once), the model's output and
        the HR."""
        rows = []
        for index, (image, sr) in enumerate(zip(valset.images, outputs, strict=True)):
            key = (valset.key, index)
            if key not in self._bicubic_crops:
                self._bicubic_crops[key] = centre_crop(bicubic(image, self.scale), GRID_CROP)
            crops = (self._bicubic_crops[key], centre_crop(sr, GRID_CROP), centre_crop(image.hr, GRID_CROP))
            rows.append(torch.cat(crops, dim=2))
        return save_png(torch.cat(rows, dim=1), path)

    def write_page(self, stage: str, iteration: int, folder: Path) -> Path | None:
        """Add the last call's outputs to the stage's comparison page as checkpoint `stage@iteration` (a timeline over
        the validations; bicubic, LR and HR added the first time) and write it, images embedded, to
        `folder/STAGE_PAGE_NAME`; None without save_img."""
        if not self.save_img or not self.outputs:
            return None
        if self.page is None:
            self.page = ComparePage(f"{stage}: validation", {n: m.better for n, m in self.metrics.items()})
        many = len(self.outputs) > 1
        for valset in self.sets:
            outputs = self.outputs.get(valset.label, [])
            baselines = valset.bicubic_per_image or [None] * len(outputs)  # scored by the validation that made them
            for (image, sr, scores), scored in zip(outputs, baselines, strict=True):
                name = f"{valset.label}/{image.name}" if many else image.name
                if (name, "hr") not in self.page.pictures:
                    up = bicubic(image, self.scale)
                    baseline = scored if scored is not None else score(up, image.hr, self.metrics)
                    self.page.add(name, Source("bicubic"), hwc(up), baseline)
                    self.page.add(name, Source("lr"), hwc(image.lr))
                    self.page.add(name, Source("hr"), hwc(image.hr))
                self.page.add(name, Source(checkpoint_name(stage, iteration), stage, iteration), hwc(sr), scores)
        self.page.fit(STAGE_PAGE_LIMIT)  # logged to MLflow, whose viewer needs the images inside the page
        return self.page.write(folder / STAGE_PAGE_NAME, embed=True)

    def continue_page(self, previous: ComparePage, stage: str, resumed_at: int) -> list[str]:
        """Grow `previous` (the page a resumed stage's run already has) instead of a new page: its checkpoints after
        `resumed_at` are dropped, since the stage redoes them (the one at `resumed_at` validated the very state it
        resumes from, so it stays). Returns the dropped checkpoints' names."""
        previous.metrics |= {n: m.better for n, m in self.metrics.items()}  # the earlier ones stay: pictures have them
        dropped = previous.drop_checkpoints(stage, resumed_at)

        def redone(name: str) -> bool:  # a checkpoint `fit` left out that the stage makes again
            step = name.removeprefix(f"{stage}@")  # checkpoint_name
            return step != name and step.isdigit() and int(step) > resumed_at

        previous.left_out = [name for name in previous.left_out if not redone(name)]
        self.page = previous
        return dropped

    def higher_is_better(self, key: str) -> bool:
        """Whether a larger value of the reported `val_<metric>` is better (PSNR, SSIM) or worse (LPIPS, DISTS)."""
        return self.metrics[key.removeprefix("val_")].better == "higher"


def checkpoint_name(stage: str, iteration: int) -> str:
    """A checkpoint's source name on the stage's page (the page's timeline groups them by `stage`)."""
    return f"{stage}@{iteration}"


def metric_labels(datasets: dict[str, ValDataset]) -> dict[str, str]:
    """Each set's name in metric keys: its `name`, in the characters MLflow accepts; a name that another set already
    uses (templates all say "Val Dataset") gets its key appended, so every set's metrics stay apart."""
    labels: dict[str, str] = {}
    for key, dataset in datasets.items():
        label = re.sub(r"[^\w.\- ]", "_", dataset.name).strip(" .") or key
        if label in labels.values():
            label = f"{label}_{key}"
        labels[key] = label
    return labels


def build_validator(job: Job, rank: int = 0, world: int = 1) -> Validator | None:
    """The job's validation (`datasets.val`, `val_2`, ..., and `val:`), its images read and its metrics built; None
    when it does not validate. Every rank of a `world` > 1 builds its own and validates its share of the images."""
    if not job.validates:
        return None
    datasets = job.datasets.validation_sets
    labels = metric_labels(datasets)
    sets = [ValSet(key, labels[key], load_set(dataset, job.scale)) for key, dataset in datasets.items()]
    for valset in sets:
        if not valset.images:  # a set's mean of nothing would leave its metrics out, and the best checkpoint blind
            dataset = datasets[valset.key]
            raise SrclusterError(
                f"datasets.{valset.key}: no usable validation image in {dataset.dataroot_gt}"
                + (f" with an LR partner in {dataset.dataroot_lq}" if dataset.dataroot_lq is not None else "")
            )
    metrics = build_metrics(job.val.metrics if job.val.metrics_enabled else {}, job.scale)
    autocast = functools.partial(amp_context, job)
    return Validator(
        sets,
        metrics,
        job.scale,
        job.val.tile_size,
        job.val.tile_overlap,
        job.val.save_img,
        autocast,
        tiling=job.srcluster.val_tiling,
        rank=rank,
        world=world,
    )


def hwc(x: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) -> H x W x 3, as pages and PNG writers take images."""
    return x.permute(1, 2, 0).numpy()


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[1:]
    size_h, size_w = min(size, h), min(size, w)
    top, left = (h - size_h) // 2, (w - size_w) // 2
    crop = x[:, top : top + size_h, left : left + size_w]
    if crop.shape[1:] != (size, size):  # pad small images so the grid stays rectangular
        crop = nn.functional.pad(crop, (0, size - size_w, 0, size - size_h))
    return crop


def save_png(x: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(x.permute(1, 2, 0).numpy()).save(path)
    return path

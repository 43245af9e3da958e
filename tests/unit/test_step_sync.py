"""The training step's waits for the device, counted on CPU: reads of a tensor's value on the host (`.item()`,
`.tolist()`, `bool()`, `float()`, ...) are where a GPU step would stop and wait. Reads made inside C++ (none in the
step, but not visible here) are not counted: the GPU benchmark (bench/gpu_step.py) counts syncs with torch's own
sync-debug mode.

Two reads are not waits on a GPU and are let through: `PendingFlag.value` (a pinned host copy of the previous
step's flag, read after its own event) and `EMA.current_decay` (a CPU tensor it builds from Python numbers).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from srcluster.config import parse_job
from srcluster.train import step
from srcluster.train.state import Stage, build_stage
from srcluster.train.step import NonFiniteLossError, check_finite, step_values, train_step

CPU = torch.device("cpu")
READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
NOT_WAITS = {("step.py", "value"), ("optim.py", "current_decay")}
SRCLUSTER = str(Path(__file__).resolve().parents[2] / "srcluster")


@pytest.fixture(autouse=True)
def gate_on_cpu(monkeypatch):
    """The CPU decides skips on the host (step.DEVICE_GATED); here it takes the device path a GPU takes."""
    monkeypatch.setattr(step, "DEVICE_GATED", frozenset({"cpu", "cuda"}))


def job(fused: bool = True, ema: float = 0.9, gan: bool = False):
    optim = {"type": "AdamW", "lr": 1e-3, **({"fused": True} if fused else {})}
    losses = [{"type": "charbonnierloss"}] + ([{"type": "ganloss", "loss_weight": 0.1}] if gan else [])
    data = {
        "name": "sync",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 20, "ema_decay": ema, "losses": losses, "optim_g": optim},
    }
    if gan:
        data["network_d"] = {"type": "unetdiscriminatorsn", "num_feat": 8}
        data["train"]["optim_d"] = optim
    return parse_job(data)


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return iter([torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(n)])


@contextmanager
def host_reads(direct_only: bool = False):
    """Every host read of a tensor's value while the block runs, as (srcluster file, function, line) of the nearest
    srcluster frame that asked, apart from the reads in NOT_WAITS. `direct_only`: only reads srcluster code makes
    itself (not those inside a library it calls)."""
    seen: list[tuple[str, str, int]] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and not direct_only and not frame.f_code.co_filename.startswith(SRCLUSTER):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(SRCLUSTER):
                where = (Path(frame.f_code.co_filename).name, frame.f_code.co_name)
                if where not in NOT_WAITS:
                    seen.append((*where, frame.f_lineno))
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextmanager
def nan_gradients(stage: Stage):
    """G's first parameter gets NaN gradients for the block (a step that must be skipped)."""
    hook = next(stage.raw_g.parameters()).register_hook(lambda grad: torch.full_like(grad, float("nan")))
    try:
        yield
    finally:
        hook.remove()


def snapshot(stage: Stage) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in stage.raw_g.parameters()]
    if stage.ema is not None:
        tensors += [t.clone() for t in stage.ema.net.state_dict().values()]
    for state in stage.optim_g.state.values():
        tensors += [t.clone() for t in state.values()]
    return tensors


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("gan", [False, True])
def test_a_step_with_fused_optimizers_waits_for_nothing(gan):
    stage = build_stage(job(gan=gan), CPU, log=lambda _: None)
    data = batches(4)
    train_step(stage, data, 1)  # the EMA's first update copies G: that one reads the flag (see step.py)
    with host_reads() as seen:
        for _ in range(3):
            out = train_step(stage, data, 1)
    assert seen == []
    assert isinstance(out["l_g_total"], torch.Tensor) and isinstance(out["grad_norm_g"], torch.Tensor)
    assert stage.iteration == 4 and stage.nonfinite_streak == 0


def test_a_step_with_another_optimizer_reads_one_flag():
    """Non-fused torch Adam reads its step counter, a CPU tensor, inside `step()`: not a wait, and not counted."""
    stage = build_stage(job(fused=False), CPU, log=lambda _: None)
    data = batches(3)
    train_step(stage, data, 1)
    with host_reads(direct_only=True) as seen:
        train_step(stage, data, 1)
    assert [(file, function) for file, function, _ in seen] == [("step.py", "train_step")]


def test_step_values_reads_every_value_at_once():
    stage = build_stage(job(gan=True), CPU, log=lambda _: None)
    out = train_step(stage, batches(1), 1)
    with host_reads() as seen:
        values = step_values(stage, out)
    assert [function for _, function, _ in seen] == ["step_values"]
    assert {"l_g_charbonnier", "l_g_gan", "l_g_total", "l_d_real", "l_d_fake", "grad_norm_g", "grad_norm_d"} <= set(
        values
    )
    assert all(type(v) is float for v in values.values())
    assert values["l_g_total"] == pytest.approx(float(out["l_g_total"]))


def test_a_non_finite_step_is_skipped_on_the_device_and_counts_toward_patience():
    stage = build_stage(job(), CPU, log=lambda _: None)
    assert stage.ema is not None
    data = batches(8)
    train_step(stage, data, 1)
    before, ema_step = snapshot(stage), stage.ema.step
    with nan_gradients(stage):
        for streak_seen in (0, 1):  # the host counts a device-gated skip at the next step
            with host_reads() as seen:
                train_step(stage, data, 1)
            assert seen == []  # skipped without the host
            assert stage.nonfinite_streak == streak_seen
            check_finite(stage, patience=3)
        assert same(before, snapshot(stage))  # G, the EMA and AdamW's moments and step count: untouched
        train_step(stage, data, 1)
        assert stage.nonfinite_streak == 2
        step_values(stage, {})  # a report point counts the step still pending
        assert stage.nonfinite_streak == 3 and stage.ema.step == ema_step
        with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite"):
            check_finite(stage, patience=3)
    train_step(stage, data, 1)
    train_step(stage, data, 1)
    assert stage.nonfinite_streak == 0 and stage.ema.step == ema_step + 2
    assert not same(before, snapshot(stage))


def test_deciding_on_the_device_trains_exactly_as_deciding_on_the_host():
    """Same fused stages, one reading the flag before stepping: bit-identical weights, EMA, optimizer state and
    counts through finite steps and a skipped one."""
    stages = [build_stage(job(gan=True), CPU, log=lambda _: None) for _ in range(2)]
    outs = []
    for stage, on_host in zip(stages, (True, False), strict=True):
        data = batches(6, seed=1)
        steps = [train_step(stage, data, 1, decide_on_host=on_host) for _ in range(3)]
        with nan_gradients(stage):
            steps.append(train_step(stage, data, 1, decide_on_host=on_host))
        steps += [train_step(stage, data, 1, decide_on_host=on_host) for _ in range(2)]
        outs.append([repr(step_values(stage, s) | {"data_wait_s": 0.0}) for s in steps])  # repr: NaN == NaN
    host, device = stages
    assert same(snapshot(host), snapshot(device))
    assert host.ema is not None and device.ema is not None and host.ema.step == device.ema.step == 5
    assert outs[0] == outs[1]
    assert host.nonfinite_streak == device.nonfinite_streak == 0

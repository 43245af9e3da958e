"""`path.resume_state`: a new run that starts where another training left off.

Two sources:
- an srcluster checkpoint (a folder a stage wrote, `<storage>/<run key>/checkpoint_<iteration>`, or its `state.pt`):
  the whole training state but the earlier run's best-so-far (this run keeps its own);
- a traiNNer-redux training state (`experiments/<name>/training_states/<iter>.state`), imported with the networks redux
  saved beside it (`models/net_g_ema_<iter>`, `models/[resume_models/]net_g_<iter>`, `net_d_<iter>`, as safetensors or
  pth): networks, optimizers, the scheduler state, the EMA step and the iteration.

Either way the optimizer options then follow this job's config, and the schedule goes on as saved or, with
`train.restart_scheduler`, restarts from this job's at the saved iteration (`Stage.follow_config`). What does not fit
this job (another architecture, a discriminator one side only, another optimizer) is refused with one line naming it;
nothing is carried over partly. The driver runs the same import on a throwaway CPU stage before Ray starts
(`check`), so a refusal costs no cluster time.
"""

from __future__ import annotations

import inspect
import io
import posixpath
from typing import Any, cast

import torch
from torch import nn

from srcluster.components.weights import read_state_dict
from srcluster.config import Job
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.train.state import SCHEDULES, STATE_FILE, Stage, build_stage

REDUX_SUFFIX = ".state"
REDUX_NETWORK_FORMATS = ("safetensors", "pth")  # redux's logger.save_checkpoint_format


def refused(uri: str, why: str) -> SrclusterError:
    return SrclusterError(f"path.resume_state {uri}: {why}")


def check(job: Job, settings: StorageSettings) -> None:
    """Refuse, before any worker starts, a resume state that cannot be carried over into this job."""
    assert job.path.resume_state is not None
    stage = build_stage(job, torch.device("cpu"), log=lambda _: None, settings=settings)
    start_from(stage, job.path.resume_state, settings, log=lambda _: None)  # rank 0 says it when the run starts


def start_from(stage: Stage, uri: str, settings: StorageSettings, log=print) -> None:
    """Load `uri` (an srcluster checkpoint or a traiNNer-redux `.state`) into a freshly built `stage`."""
    if uri.endswith(REDUX_SUFFIX):
        import_redux_state(stage, uri, settings)
        what = "traiNNer-redux state: networks, optimizers, schedule"
    else:
        load_checkpoint(stage, uri, settings)
        what = "srcluster checkpoint"
    total = stage.job.train.total_iter
    if stage.iteration >= total:
        raise refused(uri, f"it is at iteration {stage.iteration}, train.total_iter is {total}: raise total_iter")
    schedule = "this job's schedule (restart_scheduler)" if stage.job.train.restart_scheduler else "the saved schedule"
    log(f"starting from {uri} at iteration {stage.iteration} ({what}); optimizer options from this job, {schedule}")


def read_bytes(url: str, uri: str, settings: StorageSettings, missing: str) -> bytes:
    fs, path = settings.filesystem(url)
    try:
        return cast(bytes, fs.cat_file(path))  # fsspec is untyped; cat_file reads in binary mode
    except FileNotFoundError:
        raise refused(uri, missing) from None


def load_torch(data: bytes, uri: str, device: torch.device) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:  # a pickle with code in it, or not a torch file at all
        raise refused(uri, f"not a weights-only torch file ({exc.__class__.__name__})") from None


# --- srcluster checkpoints --------------------------------------------------------------------------------------------


def load_checkpoint(stage: Stage, uri: str, settings: StorageSettings) -> None:
    url = uri if uri.endswith(".pt") else f"{uri.rstrip('/')}/{STATE_FILE}"
    missing = f"no {STATE_FILE} there (give a checkpoint folder a stage wrote, or a traiNNer-redux .state file)"
    state = load_torch(read_bytes(url, uri, settings, missing), uri, stage.device)
    if not isinstance(state, dict) or "iteration" not in state or "net_g" not in state:
        raise refused(uri, f"{STATE_FILE} is not an srcluster training state")
    check_discriminator(uri, has_d="net_d" in state, job_d=stage.raw_d is not None)
    parts = stage.parts()
    for name, config_key in (("net_g", "network_g"), ("net_g_ema", "network_g"), ("net_d", "network_d")):
        if parts[name] is not None and name in state:
            load_matching(parts[name], state[name], name, config_key, uri)
    for name, net, optimizer in (("optim_g", stage.raw_g, stage.optim_g), ("optim_d", stage.raw_d, stage.optim_d)):
        if parts[name] is not None and net is not None and optimizer is not None:
            check_optimizer(state[name], net, optimizer, name, uri)
    world = stage.world  # the worker count this run trains with, not the earlier run's
    stage.load_state({k: v for k, v in state.items() if k != "best"}, rerun=False)  # the best is the earlier run's
    stage.world = world


# --- traiNNer-redux training states -----------------------------------------------------------------------------------


def import_redux_state(stage: Stage, uri: str, settings: StorageSettings) -> None:
    state = load_torch(read_bytes(uri, uri, settings, "no such file"), uri, stage.device)
    if not isinstance(state, dict) or not {"iter", "optimizers", "schedulers"} <= state.keys():
        raise refused(uri, "not a traiNNer-redux training state (it has no iter, optimizers and schedulers)")
    iteration = int(state["iter"])
    optimizers, schedulers = list(state["optimizers"]), list(state["schedulers"])
    if len(optimizers) not in (1, 2) or len(schedulers) != len(optimizers):
        raise refused(
            uri,
            f"{len(optimizers)} optimizers and {len(schedulers)} schedulers: not a generator (+ discriminator) state",
        )
    check_discriminator(uri, has_d=len(optimizers) == 2, job_d=stage.raw_d is not None)
    # redux's order: the generator's optimizer and schedule first, then the discriminator's
    trained = [(stage.raw_g, "net_g", "network_g", stage.optim_g)]
    if stage.raw_d is not None and stage.optim_d is not None:
        trained.append((stage.raw_d, "net_d", "network_d", stage.optim_d))

    models = f"{posixpath.dirname(posixpath.dirname(uri.rstrip('/')))}/models"
    for i, (net, name, config_key, optimizer) in enumerate(trained):
        load_redux_network(net, redux_network(models, name, iteration, uri, settings), name, config_key, uri, settings)
        check_optimizer(optimizers[i], net, optimizer, label_of(i), uri)
        try:
            optimizer.load_state_dict(optimizers[i])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise refused(uri, f"{label_of(i)} does not load into {type(optimizer).__name__}: {exc}") from None
        if callable(getattr(optimizer, "train", None)):  # a schedule-free optimizer trains in train mode
            optimizer.train()  # pyright: ignore[reportAttributeAccessIssue]
    if stage.ema is not None:  # redux falls back to net_g when it saved no EMA, and so does this
        ema_file = redux_network(models, "net_g_ema", iteration, uri, settings, required=False)
        source = ema_file or redux_network(models, "net_g", iteration, uri, settings)
        load_redux_network(stage.ema.net, source, "net_g_ema", "network_g", uri, settings)
        stage.ema.step = int(state.get("ema_step", 0)) if ema_file else 0
    for name, scaler in (("scaler_g", stage.scaler_g), ("scaler_d", stage.scaler_d)):
        if name in state and scaler.is_enabled():  # fp16 here and there: the loss scale it had reached
            scaler.load_state_dict(state[name])
    stage.iteration = iteration
    stage.follow_config(dict(zip(SCHEDULES, schedulers, strict=False)))  # redux's order: G's, then D's


def redux_network(
    models: str, label: str, iteration: int, uri: str, settings: StorageSettings, *, required: bool = True
) -> str | None:
    """The file redux saved `label` (net_g, net_g_ema, net_d) in at `iteration`: in `models/` or
    `models/resume_models/` (where it keeps net_g and net_d when it trains an EMA), as safetensors or pth."""
    candidates = [
        f"{folder}/{label}_{iteration}.{ext}"
        for folder in (f"{models}/resume_models", models)
        for ext in REDUX_NETWORK_FORMATS
    ]
    for candidate in candidates:
        fs, path = settings.filesystem(candidate)
        if fs.exists(path):
            return candidate
    if required:
        raise refused(uri, f"no {label}_{iteration}.safetensors or .pth in {models} or {models}/resume_models")
    return None


def load_redux_network(net: nn.Module, source: str | None, name: str, config_key: str, uri: str, settings) -> None:
    assert source is not None
    try:
        incoming = read_state_dict(source, settings=settings)
    except SrclusterError as exc:
        raise refused(uri, f"{name}: {exc}") from None
    load_matching(net, {k.removeprefix("module."): v for k, v in incoming.items()}, name, config_key, uri)


# --- what fits ----------------------------------------------------------------------------------------------------


def check_discriminator(uri: str, *, has_d: bool, job_d: bool) -> None:
    if has_d and not job_d:
        raise refused(
            uri,
            "it trained a discriminator and this job has no ganloss: its D and D optimizer cannot be carried over "
            "(start from its generator with path.pretrain_network_g instead)",
        )
    if job_d and not has_d:
        raise refused(
            uri,
            "it has no discriminator and this job trains one (ganloss): there is no D or D optimizer to carry over "
            "(start from its generator with path.pretrain_network_g instead)",
        )


def load_matching(net: nn.Module, incoming: dict[str, torch.Tensor], name: str, config_key: str, uri: str) -> None:
    """Load `incoming` into `net` when every tensor matches in name and shape; otherwise refuse, naming a few."""
    own = net.state_dict()
    problems = [f"{k} missing" for k in own if k not in incoming]
    problems += [f"{k} not in {config_key}" for k in incoming if k not in own]
    problems += [
        f"{k} shape {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in incoming.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; {len(problems) - 4} more" if len(problems) > 4 else "")
        raise refused(uri, f"{name} does not fit {config_key} ({shown}): it cannot be carried over")
    net.load_state_dict(incoming)


def label_of(index: int) -> str:
    return f"optimizers[{index}]"


def check_optimizer(saved: dict[str, Any], net: nn.Module, optimizer: torch.optim.Optimizer, label: str, uri: str):
    """A state of the job's optimizer over exactly the network's parameters (the order redux and srcluster both use)."""
    groups = saved.get("param_groups", [])
    held = sum(len(group["params"]) for group in groups)
    params = len([p for p in net.parameters() if p.requires_grad])
    if len(groups) != 1 or held != params:
        raise refused(uri, f"{label} covers {held} tensors in {len(groups)} groups, the network has {params} in 1")
    keys = {key for tensor_state in saved.get("state", {}).values() for key in tensor_state}
    expected = state_keys(optimizer)
    if expected is not None and not keys <= expected:
        raise refused(
            uri,
            f"{label} is the state of another optimizer (it keeps {', '.join(sorted(keys - expected))}, which "
            f"{type(optimizer).__name__} does not): set train.optim_g/optim_d.type to the one it trained with",
        )


def state_keys(optimizer: torch.optim.Optimizer) -> set[str] | None:
    """The per-tensor state keys `optimizer`'s class keeps, read off one step of a throwaway copy on one tensor (each
    optimizer library names its state its own way); None when the class cannot be probed like that."""
    probe_param = nn.Parameter(torch.zeros(4))
    accepted = inspect.signature(type(optimizer)).parameters
    options = {k: v for k, v in optimizer.defaults.items() if k in accepted}  # some defaults are derived, not options
    try:
        probe = type(optimizer)([probe_param], **options)
        if callable(getattr(probe, "train", None)):  # schedule-free optimizers step only in train mode
            probe.train()  # pyright: ignore[reportAttributeAccessIssue]
        probe_param.grad = torch.ones_like(probe_param)
        probe.step()
    except Exception:  # an optimizer that cannot be probed so: load_state_dict decides
        return None
    return {key for tensor_state in probe.state.values() for key in tensor_state}

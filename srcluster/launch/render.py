"""`srcluster render slurm|k8s`: a job file as an sbatch script or KubeRay manifests, from the Jinja templates in
`srcluster/launch/templates/` (shipped in the wheel; `infra/` holds rendered examples).

The job file is validated and checked against the requested resources first (a stage that asks for more GPUs than the
allocation has is an error here, not a job stuck in a queue), then embedded in the output, so the script or manifest
runs exactly the file that was checked. Endpoints are rendered in; credentials never are.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

from jinja2 import Environment, PackageLoader, StrictUndefined

from srcluster import __version__
from srcluster.config import Job
from srcluster.errors import SrclusterError
from srcluster.launch.jobfile import JobFile, load
from srcluster.launch.submit import job_env
from srcluster.storage import StorageSettings
from srcluster.train.specs import crops_to_fit, size_data

JOB_DIR = "/srcluster/job"  # where the ConfigMap with the job file is mounted in the pods
HEREDOC_END = "SRCLUSTER_JOB_FILE"


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("srcluster.launch", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = shlex.quote
    return env


def fit(jobfile: JobFile, *, hosts: int, gpus: float, cpus: float | None, host: str, flag: str) -> list[str]:
    """Check that every stage's workers fit on `hosts` hosts (nodes or pods) of `gpus` GPUs and `cpus` CPUs each.
    Raises one line naming the limit that is short; returns warnings."""
    warnings: list[str] = []
    if hosts < 1:
        raise SrclusterError(f"--{flag}s must be at least 1, got {hosts}")
    if gpus < 0 or (cpus is not None and cpus <= 0):
        raise SrclusterError("GPU counts must be >= 0 and CPU counts > 0")
    for job in jobfile.jobs:
        c = job.srcluster
        where = f"{jobfile.path} ({job.name})"
        per_host = math.inf
        if c.use_gpu:
            if gpus == 0:
                raise SrclusterError(
                    f"{where}: srcluster.use_gpu is true but --gpus-per-{flag} is 0; give GPUs, or "
                    "set use_gpu: false to train on CPUs"
                )
            if c.gpus_per_worker > gpus:
                raise SrclusterError(
                    f"{where}: a worker needs {c.gpus_per_worker:g} GPUs (srcluster.gpus_per_worker) "
                    f"but a {host} has {gpus:g} (--gpus-per-{flag})"
                )
            per_host = math.floor(gpus / c.gpus_per_worker) if c.gpus_per_worker else math.inf
        if cpus is not None:
            if c.cpus_per_worker > cpus:
                raise SrclusterError(
                    f"{where}: a worker needs {c.cpus_per_worker:g} CPUs (srcluster.cpus_per_worker) "
                    f"but a {host} has {cpus:g} (--cpus-per-{flag})"
                )
            per_host = min(per_host, math.floor(cpus / c.cpus_per_worker))
        # an elastic run ([min, max] workers) starts with min and grows to max as resources allow
        low, high = c.workers if isinstance(c.workers, tuple) else (c.workers, c.workers)
        capacity = per_host * hosts
        shape = (
            (f"{gpus:g} GPUs" + (f" and {cpus:g} CPUs" if cpus is not None else ""))
            if c.use_gpu
            else (f"{cpus:g} CPUs" if cpus is not None else "")
        )
        if capacity < low:
            need = f"{c.gpus_per_worker:g} GPUs" if c.use_gpu else f"{c.cpus_per_worker:g} CPUs"
            raise SrclusterError(
                f"{where}: {low} workers of {need} do not fit on {hosts} {host}(s) with {shape} "
                f"each (room for {capacity}); raise --{flag}s or lower srcluster.workers"
            )
        if capacity < high:
            warnings.append(f"{where}: room for {capacity} of up to {high} elastic workers")
        if gpus > 0 and not c.use_gpu:
            warnings.append(f"{where}: GPUs were asked for but srcluster.use_gpu is false: the stage trains on CPUs")
        warnings += data_fit(job, where, gpus=gpus, cpus=cpus, host=host, flag=flag)
    return warnings


def data_fit(job: Job, where: str, *, gpus: float, cpus: float | None, host: str, flag: str) -> list[str]:
    """A warning when a GPU worker has fewer CPUs than its data path needs to keep the GPU busy (`size_data`): the
    loader cores for the architecture's step rate plus one for the step, or when its loader workers are fewer."""
    sizing, c = size_data(job), job.srcluster
    if sizing.cpus_needed is None or sizing.cores is None or sizing.needed is None:
        return []  # training on CPUs, or an architecture whose step rate is not known
    numbers = (
        f"{sizing.arch} trains ~{sizing.needed:.0f} samples/s per GPU and {sizing.path} data at crops_per_tile "
        f"{sizing.crops_per_tile} makes ~{sizing.per_core:.0f} per core"
    )
    if c.cpus_per_worker < sizing.cpus_needed:
        per_gpu = f"; a {host} has {cpus * c.gpus_per_worker / gpus:g} per GPU" if cpus is not None and gpus else ""
        enough = crops_to_fit(job, math.floor(c.cpus_per_worker) - 1)
        fix = f"srcluster.crops_per_tile {enough} would fit, or " if enough else "raise srcluster.crops_per_tile or "
        if sizing.path == "otf-workers":  # degrading costs ~10x a decode: more crops per tile barely help there
            fix = "set srcluster.degrade_on: device (the GPU applies the degradations), " + fix
        short = (
            f"{where}: the data path needs {sizing.cpus_needed} CPUs per GPU ({numbers}: {sizing.cores} loader cores "
            f"+ 1 for the step) but a worker has {c.cpus_per_worker:g} (srcluster.cpus_per_worker{per_gpu}); "
            f"{fix}give it more CPUs (srcluster.cpus_per_worker, --cpus-per-{flag})"
        )
        return [short]
    if sizing.workers < sizing.cores:
        few = (
            f"{where}: {sizing.workers} loader workers ({sizing.source}) but the data path needs {sizing.cores} "
            f"({numbers}); set srcluster.loader_workers: auto, or raise srcluster.crops_per_tile"
        )
        return [few]
    return []


def shipped_text(jobfile: JobFile) -> str:
    jobfile.check_no_password()
    if any(line.strip() == HEREDOC_END for line in jobfile.text.splitlines()):
        raise SrclusterError(f"{jobfile.path}: a line reads {HEREDOC_END}, which ends the embedded file early")
    return jobfile.text.rstrip("\n")


def one_line(name: str, value: str | None) -> str | None:
    if value is not None and (not value.strip() or re.search(r"\s", value)):
        raise SrclusterError(f"--{name} {value!r}: expected one word without spaces")
    return value


# --- Slurm ------------------------------------------------------------------------------------------------------------


@dataclass
class SlurmOptions:
    nodes: int
    gpus_per_node: int
    cpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    output: str = "srcluster-%x-%j.out"
    setup: str | None = None  # shell lines run first: `module load ...`, `source venv/bin/activate`
    # None: ports from a block chosen by the Slurm job id, and a Ray temp dir of the job's own
    ray_port: int | None = None
    dashboard_port: int | None = None
    ray_args: str = ""  # more `ray start` arguments for every node (ports, --temp-dir, --object-store-memory)
    join_timeout: int = 300
    env: dict[str, str] = field(default_factory=dict)
    fresh: bool = False


def render_slurm(path: str | Path, opts: SlurmOptions) -> tuple[str, list[str]]:
    """(sbatch script, warnings)."""
    jobfile = load(path)
    warnings = fit(
        jobfile, hosts=opts.nodes, gpus=opts.gpus_per_node, cpus=opts.cpus_per_node, host="node", flag="node"
    )
    jobfile.relative_files()  # relative paths resolve in the submit folder: they must exist there
    for name in ("partition", "time", "account", "output"):
        one_line(name, getattr(opts, name))
    env = {k: v for k, v in job_env(StorageSettings.resolve(), opts.env).items() if k != "RAY_OVERRIDE_JOB_RUNTIME_ENV"}
    env.update(jobfile.training_env())
    text = (
        environment()
        .get_template("slurm.sbatch.j2")
        .render(
            version=__version__,
            command=jobfile.command,
            job_name=jobfile.name,
            slurm_name=f"srcluster-{re.sub(r'[^A-Za-z0-9_.-]+', '-', jobfile.name)}",
            nodes=opts.nodes,
            gpus_per_node=opts.gpus_per_node,
            cpus_per_node=opts.cpus_per_node,
            partition=opts.partition,
            time=opts.time,
            account=opts.account,
            output=opts.output,
            env=env,
            setup=(opts.setup or "").strip(),
            ray_port=opts.ray_port,
            dashboard_port=opts.dashboard_port,
            ray_args="".join(" " + shlex.quote(a) for a in shlex.split(opts.ray_args)),
            join_timeout=opts.join_timeout,
            job_file=jobfile.path.name,
            job_text=shipped_text(jobfile),
            extra_args=" --fresh" if opts.fresh else "",
        )
    )
    return text, warnings


# --- Kubernetes (KubeRay) ---------------------------------------------------------------------------------------------


@dataclass
class K8sOptions:
    workers: int
    gpus_per_worker: int
    image: str
    kind: str = "rayjob"  # or "raycluster"
    secret: str = "srcluster-credentials"
    name: str | None = None
    namespace: str | None = None
    cpus_per_worker: int = 8
    memory_per_worker: str = "32Gi"
    head_cpus: int = 4
    head_memory: str = "16Gi"
    shm_size: str = "8Gi"
    # seconds after the job ends before KubeRay deletes its RayCluster (shutdownAfterJobFinishes); GPUs idle that long
    ttl: int = 60
    deadline: int | None = None  # activeDeadlineSeconds
    env: dict[str, str] = field(default_factory=dict)
    fresh: bool = False


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
QUANTITY = re.compile(r"\d+(\.\d+)?([KMGTPE]i?|m)?")


def k8s_name(jobfile: JobFile, explicit: str | None) -> str:
    if explicit:
        if not DNS_LABEL.fullmatch(explicit) or len(explicit) > 40:
            raise SrclusterError(f"--name {explicit!r}: lowercase letters, digits and '-', at most 40 characters")
        return explicit
    slug = re.sub(r"[^a-z0-9]+", "-", jobfile.name.lower()).strip("-")
    return f"srcluster-{slug}"[:40].rstrip("-")


def render_k8s(path: str | Path, opts: K8sOptions) -> tuple[str, list[str]]:
    """(multi-document YAML: ConfigMap + RayJob or RayCluster, warnings)."""
    jobfile = load(path)
    if opts.kind not in ("rayjob", "raycluster"):
        raise SrclusterError(f"--kind {opts.kind!r}: expected rayjob or raycluster")
    if not opts.image.strip() or re.search(r"\s", opts.image):
        raise SrclusterError(f"--image {opts.image!r}: expected an image reference such as ghcr.io/you/srcluster:0.1")
    if not DNS_LABEL.fullmatch(opts.secret):
        raise SrclusterError(f"--secret {opts.secret!r}: not a Kubernetes Secret name")
    for flag, quantity in (
        ("memory-per-worker", opts.memory_per_worker),
        ("head-memory", opts.head_memory),
        ("shm-size", opts.shm_size),
    ):
        if not QUANTITY.fullmatch(quantity):
            raise SrclusterError(f"--{flag} {quantity!r}: not a Kubernetes quantity (e.g. 32Gi)")
    warnings = fit(
        jobfile,
        hosts=opts.workers,
        gpus=opts.gpus_per_worker,
        cpus=opts.cpus_per_worker,
        host="worker pod",
        flag="worker",
    )
    for key, value in jobfile.local_refs():
        if not Path(value).is_absolute():
            raise SrclusterError(
                f"{jobfile.path}: {key} names the local path {value}, which pods cannot see; use "
                "s3:// or an absolute path inside the image or a mounted volume"
            )
    env = {k: v for k, v in job_env(StorageSettings.resolve()).items() if k != "RAY_OVERRIDE_JOB_RUNTIME_ENV"}
    env.update(jobfile.training_env())
    env.update(opts.env)
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        host = urlparse(env.get(key, "")).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            warnings.append(
                f"{key}={env[key]} is this machine's loopback, which pods cannot reach; "
                f"pass --env {key}=URL-the-cluster-reaches"
            )
    name = k8s_name(jobfile, opts.name)
    job_file = jobfile.path.name
    entrypoint = shlex.join(
        ["srcluster", jobfile.command, f"{JOB_DIR}/{job_file}", *(["--fresh"] if opts.fresh else [])]
    )

    text = (
        environment()
        .get_template("k8s.yaml.j2")
        .render(
            version=__version__,
            command=jobfile.command,
            job_name=jobfile.name,
            kind=opts.kind,
            name=name,
            namespace=opts.namespace,
            image=opts.image,
            secret=opts.secret,
            env=env,
            workers=opts.workers,
            gpus_per_worker=opts.gpus_per_worker,
            cpus_per_worker=opts.cpus_per_worker,
            memory_per_worker=opts.memory_per_worker,
            head_cpus=opts.head_cpus,
            head_memory=opts.head_memory,
            shm_size=opts.shm_size,
            ttl=opts.ttl,
            deadline=opts.deadline,
            ray_version=version("ray"),
            job_dir=JOB_DIR,
            job_file=job_file,
            job_text=shipped_text(jobfile),
            entrypoint=entrypoint,
        )
    )
    return text.rstrip("\n") + "\n", warnings

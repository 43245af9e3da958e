"""The launch commands: `srcluster submit`, `srcluster jobs list|status|logs|stop`, `srcluster render slurm|k8s`."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from rich.markup import escape

from srcluster.cli.output import console, err_console, warn
from srcluster.errors import SrclusterError
from srcluster.launch.render import K8sOptions, SlurmOptions, render_k8s, render_slurm
from srcluster.launch.submit import call, connect, follow, parse_env, resolve_address, submit


def cmd_submit(args: argparse.Namespace) -> int:
    address = resolve_address(args.address)
    client, job_id = submit(args.job, address, pip=args.pip, env=parse_env(args.env), fresh=args.fresh)
    print(job_id, flush=True)
    err_console.print(
        f"submitted to {escape(address)}; follow with `srcluster jobs logs {job_id} --follow`",
        highlight=False,
        soft_wrap=True,
    )
    if not args.follow:
        return 0
    return report(job_id, follow_logs(client, job_id))


def follow_logs(client, job_id: str) -> str:
    try:
        return follow(client, job_id)
    except KeyboardInterrupt:
        err_console.print(f"stopped following; the job keeps running (stop it with `srcluster jobs stop {job_id}`)")
        raise


def report(job_id: str, status: str) -> int:
    colour = "green" if status == "SUCCEEDED" else "red"
    err_console.print(f"job {job_id}: [{colour}]{status}[/]", highlight=False)
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.job_id:
        raise_missing(args.action)
    address = resolve_address(args.address)
    client = connect(address)
    if args.action == "list":
        jobs = sorted(call(address, client.list_jobs), key=lambda j: j.start_time or 0)
        if not jobs:
            print(f"no jobs on {address}")
        width = max([len(j.submission_id or j.job_id or "-") for j in jobs] + [13])
        for i, job in enumerate(jobs):
            if i == 0:
                print(f"{'submission id':{width}}  {'status':9}  {'started':16}  entrypoint")
            started = (
                datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M") if job.start_time else "-"
            )
            # plain columns, never cut: ids are copied from here into `jobs logs|stop`
            job_id = job.submission_id or job.job_id or "-"
            print(f"{job_id:{width}}  {job.status.value:9}  {started:16}  {job.entrypoint}")
        return 0
    if args.action == "status":
        info = call(address, client.get_job_info, args.job_id)
        print(info.status.value + (f": {info.message}" if info.message else ""))
        return 0
    if args.action == "logs":
        if args.follow:
            call(address, client.get_job_status, args.job_id)  # an unknown id is one line, not a stream error
            return report(args.job_id, follow_logs(client, args.job_id))
        sys.stdout.write(call(address, client.get_job_logs, args.job_id))
        return 0
    stopped = call(address, client.stop_job, args.job_id)
    console.print(f"{args.job_id}: " + ("stop requested" if stopped else "already finished"))
    return 0


def raise_missing(action: str) -> None:
    raise SrclusterError(f"srcluster jobs {action}: give the submission id (see `srcluster jobs list`)")


def write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text)
        if output.endswith((".sh", ".sbatch")):
            Path(output).chmod(0o755)
        err_console.print(f"wrote {escape(output)}", highlight=False)
    else:
        sys.stdout.write(text)


def cmd_render_slurm(args: argparse.Namespace) -> int:
    text, warnings = render_slurm(
        args.job,
        SlurmOptions(
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            cpus_per_node=args.cpus_per_node,
            partition=args.partition,
            time=args.time,
            account=args.account,
            output=args.log,
            setup=args.setup,
            ray_port=args.ray_port,
            dashboard_port=args.dashboard_port,
            ray_args=args.ray_args,
            join_timeout=args.join_timeout,
            env=parse_env(args.env),
            fresh=args.fresh,
        ),
    )
    warn(warnings)
    write(text, args.output)
    return 0


def cmd_render_k8s(args: argparse.Namespace) -> int:
    text, warnings = render_k8s(
        args.job,
        K8sOptions(
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            image=args.image,
            kind=args.kind,
            secret=args.secret,
            name=args.name,
            namespace=args.namespace,
            cpus_per_worker=args.cpus_per_worker,
            memory_per_worker=args.memory_per_worker,
            head_cpus=args.head_cpus,
            head_memory=args.head_memory,
            shm_size=args.shm_size,
            deadline=args.deadline,
            env=parse_env(args.env),
            fresh=args.fresh,
        ),
    )
    warn(warnings)
    write(text, args.output)
    return 0


def register(subparsers) -> None:
    env_help = "NAME=VALUE for the job's environment, e.g. AWS_ENDPOINT_URL as the cluster reaches it (no secrets)"

    s = subparsers.add_parser(
        "submit",
        help="submit a job or recipe file to a Ray cluster (Ray Job Submission API)",
        description="Validate JOB locally, then submit `srcluster train|pipeline JOB` with a "
        "working folder holding it (and the relative files it names) and the "
        "storage/MLflow endpoints as environment variables. Credentials come from "
        "the cluster.",
    )
    s.add_argument("job", help="job file (one stage) or recipe file (with `stages:`)")
    s.add_argument(
        "--address", help="the head's dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)"
    )
    s.add_argument("--follow", action="store_true", help="stream the logs and exit with the job's status")
    s.add_argument("--pip", action="append", metavar="REQ", help="extra pip requirement for the job (repeat)")
    s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help=env_help)
    s.add_argument("--fresh", action="store_true", help="train again even if this config already ran")
    s.set_defaults(fn=cmd_submit)

    j = subparsers.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop")
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("job_id", nargs="?", help="submission id (as `srcluster submit` printed it)")
    j.add_argument("--address", help="http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)")
    j.add_argument("--follow", action="store_true", help="logs: stream until the job ends, exit with its status")
    j.set_defaults(fn=cmd_jobs)

    r = subparsers.add_parser("render", help="an sbatch script or KubeRay manifests for a job file").add_subparsers(
        dest="render_command", required=True
    )
    sl = r.add_parser("slurm", help="sbatch script: Ray head + workers with srun, the stage, teardown")
    sl.add_argument("job")
    sl.add_argument("--nodes", type=int, required=True)
    sl.add_argument("--gpus-per-node", type=int, required=True, help="0 for CPU-only")
    sl.add_argument("--cpus-per-node", type=int, help="CPUs per node (default: what Slurm gives)")
    sl.add_argument("--partition")
    sl.add_argument("--time", help="wall-clock limit, e.g. 24:00:00")
    sl.add_argument("--account")
    sl.add_argument("--log", default="srcluster-%x-%j.out", help="sbatch --output pattern")
    sl.add_argument("--setup", help="shell lines run first on the head, e.g. 'source ~/venvs/sr/bin/activate'")
    per_job = "default: one port block per Slurm job id, so jobs sharing a node do not collide"
    sl.add_argument("--ray-port", type=int, help=f"the head's GCS port ({per_job})")
    sl.add_argument("--dashboard-port", type=int, help=f"the dashboard port ({per_job})")
    sl.add_argument("--ray-args", default="", help="more `ray start` arguments for every node")
    sl.add_argument("--join-timeout", type=int, default=300, help="seconds to wait for all nodes to join")
    sl.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help=env_help)
    sl.add_argument("--fresh", action="store_true")
    sl.add_argument("-o", "--output", help="write here instead of stdout")
    sl.set_defaults(fn=cmd_render_slurm)

    k = r.add_parser("k8s", help="KubeRay RayJob (or RayCluster) with a GPU worker group")
    k.add_argument("job")
    k.add_argument("--workers", type=int, required=True, help="worker pods")
    k.add_argument("--gpus-per-worker", type=int, required=True, help="GPUs per worker pod (0 for CPU-only)")
    k.add_argument("--image", required=True, help="container image with srcluster installed")
    k.add_argument(
        "--kind",
        choices=["rayjob", "raycluster"],
        default="rayjob",
        help="rayjob: run the job, then delete the cluster; raycluster: a long-lived cluster (Tune sweeps)",
    )
    k.add_argument("--secret", default="srcluster-credentials", help="Kubernetes Secret with the credentials")
    k.add_argument("--name", help="resource name (default: srcluster-JOBNAME)")
    k.add_argument("--namespace")
    k.add_argument("--cpus-per-worker", type=int, default=8, help="CPUs per worker pod")
    k.add_argument("--memory-per-worker", default="32Gi")
    k.add_argument("--head-cpus", type=int, default=4)
    k.add_argument("--head-memory", default="16Gi")
    k.add_argument("--shm-size", default="8Gi", help="/dev/shm size per pod")
    k.add_argument("--deadline", type=int, help="RayJob activeDeadlineSeconds")
    k.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help=env_help)
    k.add_argument("--fresh", action="store_true")
    k.add_argument("-o", "--output", help="write here instead of stdout")
    k.set_defaults(fn=cmd_render_k8s)

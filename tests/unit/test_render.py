"""`srcluster render slurm|k8s`: KubeRay manifests validated against the CRDs' openAPIV3Schema (made strict, so a
misspelt field fails), no secret in anything rendered, the job file embedded unchanged, and resource requests that
cannot fit refused in one line before anything is written."""

from __future__ import annotations

import copy
import functools
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.jobs import CANARY, launch_job, write_job
from helpers.shared import shared_data
from srcluster.cli import main

CRDS = shared_data("kuberay-crds")


def strict(schema: dict) -> dict:
    """The CRD schema with `additionalProperties: false` wherever it lists properties and does not keep unknown
    fields: Kubernetes would silently drop a misspelt field; here it is an error."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def crd_validator(kind: str):
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.exists():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (the shared test data)")
    return _validator(path)


@functools.cache
def _validator(path: Path):
    import jsonschema

    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: C parser
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def errors(validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


@pytest.fixture
def secrets_in_env(monkeypatch):
    """A canary secret wherever credentials could leak from: the environment and a shared credentials file."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://seaweedfs.storage.svc:8333")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.mlflow.svc:5000")


def render(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["render", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", ["rayjob", "raycluster"])
def test_k8s_manifests_validate_against_the_kuberay_crds_and_hold_no_secret(
    tmp_path, monkeypatch, capsys, secrets_in_env, kind
):
    monkeypatch.chdir(tmp_path)
    job = launch_job("k8s-stage", srcluster={"workers": 4, "use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 4})
    path = write_job(tmp_path, job)
    code, out, err = render(
        capsys,
        "k8s",
        "job.yml",
        "--workers",
        "2",
        "--gpus-per-worker",
        "2",
        "--image",
        "ghcr.io/acme/srcluster:0.1",
        "--kind",
        kind,
        "--secret",
        "sr-creds",
    )
    assert code == 0, err
    assert CANARY not in out and "AKIACANARY" not in out
    config_map, resource = yaml.safe_load_all(out)
    assert config_map["kind"] == "ConfigMap" and config_map["data"]["job.yml"] == path.read_text()
    assert resource["apiVersion"] == "ray.io/v1"
    assert errors(crd_validator("RayJob" if kind == "rayjob" else "RayCluster"), resource) == []

    cluster = resource["spec"]["rayClusterSpec"] if kind == "rayjob" else resource["spec"]
    if kind == "rayjob":
        assert resource["kind"] == "RayJob" and resource["spec"]["shutdownAfterJobFinishes"] is True
        assert resource["spec"]["entrypoint"] == "srcluster train /srcluster/job/job.yml"
    else:
        assert resource["kind"] == "RayCluster" and "entrypoint" not in resource["spec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    for pod in (cluster["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs.storage.svc:8333"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000"
        assert "SRCLUSTER_HOME" not in env and not any("SECRET" in name for name in env)
        assert container["envFrom"] == [{"secretRef": {"name": "sr-creds"}}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert volumes["job"]["configMap"]["name"] == config_map["metadata"]["name"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no GPU worker lands on the GPU-less head


def test_the_strict_crd_check_catches_a_misspelt_field(tmp_path, monkeypatch, capsys, secrets_in_env):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, launch_job("typo"))
    _code, out, _ = render(capsys, "k8s", "job.yml", "--workers", "1", "--gpus-per-worker", "0", "--image", "img:1")
    resource = list(yaml.safe_load_all(out))[1]
    resource["spec"]["shutdownAfterJobFinish"] = True
    found = errors(crd_validator("RayJob"), resource)
    assert any("shutdownAfterJobFinish" in e for e in found)


def test_cpu_only_k8s_has_no_gpu_requests_and_writes_to_a_file(tmp_path, monkeypatch, capsys, secrets_in_env):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, launch_job("cpu-stage"))
    code, out, err = render(
        capsys, "k8s", "job.yml", "--workers", "1", "--gpus-per-worker", "0", "--image", "img:1", "-o", "stage.yaml"
    )
    assert code == 0 and out == "" and "wrote stage.yaml" in err
    text = (tmp_path / "stage.yaml").read_text()
    assert "nvidia.com/gpu" not in text and "num-cpus" not in text
    assert errors(crd_validator("RayJob"), list(yaml.safe_load_all(text))[1]) == []


def test_slurm_script_embeds_the_job_and_no_secret(tmp_path, monkeypatch, capsys, secrets_in_env):
    monkeypatch.chdir(tmp_path)
    path = write_job(tmp_path, launch_job("slurm-stage", srcluster={"workers": 4, "use_gpu": True}))
    code, out, err = render(
        capsys,
        "slurm",
        "job.yml",
        "--nodes",
        "2",
        "--gpus-per-node",
        "2",
        "--cpus-per-node",
        "16",
        "--partition",
        "gpu",
        "--time",
        "04:00:00",
        "--account",
        "sr-lab",
    )
    assert code == 0, err
    assert CANARY not in out and "AKIACANARY" not in out
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=04:00:00",
        "#SBATCH --account=sr-lab",
        "export AWS_ENDPOINT_URL=http://seaweedfs.storage.svc:8333",
        "--num-gpus=2",
    ):
        assert line in out, line
    embedded = re.search(r"<<'SRCLUSTER_JOB_FILE'\n(.*?)\nSRCLUSTER_JOB_FILE\n", out, re.DOTALL).group(1)
    assert embedded + "\n" == path.read_text()
    assert re.search(r'^srcluster train "\$WORKDIR/job.yml"', out, re.MULTILINE)
    if shutil.which("bash"):
        script = tmp_path / "job.sbatch"
        script.write_text(out)
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0


def test_a_recipe_renders_the_pipeline_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, {**launch_job("recipe"), "stages": {"fidelity_2x": {}, "fidelity_4x": {}}}, "recipe.yml")
    code, out, _ = render(capsys, "slurm", "recipe.yml", "--nodes", "1", "--gpus-per-node", "0")
    assert code == 0 and 'srcluster pipeline "$WORKDIR/recipe.yml"' in out
    code, out, _ = render(capsys, "k8s", "recipe.yml", "--workers", "1", "--gpus-per-worker", "0", "--image", "img:1")
    assert code == 0 and "srcluster pipeline /srcluster/job/recipe.yml" in out


@pytest.mark.parametrize(
    ("cluster", "args", "expected"),
    [
        (
            {"workers": 4, "use_gpu": True, "gpus_per_worker": 1},
            ["slurm", "--nodes", "1", "--gpus-per-node", "2"],
            "4 workers of 1 GPUs do not fit on 1 node(s) with 2 GPUs each (room for 2)",
        ),
        (
            {"workers": 1, "use_gpu": True, "gpus_per_worker": 4},
            ["slurm", "--nodes", "2", "--gpus-per-node", "2"],
            "a worker needs 4 GPUs (srcluster.gpus_per_worker) but a node has 2",
        ),
        (
            {"workers": 1, "use_gpu": True},
            ["slurm", "--nodes", "1", "--gpus-per-node", "0"],
            "srcluster.use_gpu is true but --gpus-per-node is 0",
        ),
        (
            {"workers": 8, "cpus_per_worker": 4},
            ["slurm", "--nodes", "2", "--gpus-per-node", "0", "--cpus-per-node", "8"],
            "8 workers of 4 CPUs do not fit on 2 node(s)",
        ),
        (
            {"workers": 3, "use_gpu": True},
            ["k8s", "--workers", "1", "--gpus-per-worker", "2", "--image", "img:1"],
            "3 workers of 1 GPUs do not fit on 1 worker pod(s)",
        ),
        ({"workers": 1}, ["slurm", "--nodes", "0", "--gpus-per-node", "0"], "--nodes must be at least 1"),
        ({"workers": 1}, ["slurm", "--nodes", "1", "--gpus-per-node", "0", "--partition", "a b"], "--partition 'a b'"),
        (
            {"workers": 1},
            ["k8s", "--workers", "1", "--gpus-per-worker", "0", "--image", "img:1", "--secret", "Bad_Name"],
            "--secret 'Bad_Name'",
        ),
    ],
)
def test_requests_that_do_not_fit_fail_in_one_line_and_write_nothing(
    tmp_path, monkeypatch, capsys, cluster, args, expected
):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, {**launch_job("fit"), "srcluster": cluster})
    code, _out, err = render(capsys, args[0], "job.yml", *args[1:], "-o", "out.txt")
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.txt").exists()


def test_k8s_refuses_relative_local_files_pods_cannot_see(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.safetensors").write_bytes(b"x")
    write_job(tmp_path, {**launch_job("local"), "path": {"pretrain_network_g": "g.safetensors"}})
    code, _, err = render(capsys, "k8s", "job.yml", "--workers", "1", "--gpus-per-worker", "0", "--image", "img:1")
    assert code == 2 and "path.pretrain_network_g names the local path g.safetensors, which pods cannot see" in err


def test_the_rendered_examples_in_infra_are_current(tmp_path, monkeypatch, capsys):
    """infra/slurm and infra/k8s hold examples rendered from infra/example-job.yml; they must match the templates."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    examples = runpy.run_path(str(root / "infra" / "render_examples.py"))
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_", "SRCLUSTER_", "RAY_"))]:
        monkeypatch.delenv(name)
    for name, value in examples["ENV"].items():
        monkeypatch.setenv(name, value)
    for target, args in examples["EXAMPLES"].items():
        assert main(["render", *args]) == 0
        assert capsys.readouterr().out == (root / target).read_text(), (
            f"{target} is stale: python infra/render_examples.py"
        )


def test_launchers_ship_no_local_state_and_carry_the_jobs_nccl_settings(tmp_path, monkeypatch, capsys, secrets_in_env):
    """The submitter's srcluster home, AWS profile and credentials file stay here (nodes resolve their own); the job's
    `srcluster.env` reaches every node; a finished RayJob frees its GPUs within a minute; on Slurm each job gets ports
    and a Ray temp dir of its own, every `ray start` step its CPUs, and the time limit's warning signal."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path / "my-home"))
    monkeypatch.setenv("AWS_PROFILE", "my-laptop-profile")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    (tmp_path / "credentials").write_text("[my-laptop-profile]\naws_access_key_id = A\naws_secret_access_key = B\n")
    nccl = {"NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5"}
    job = launch_job("nccl-stage", srcluster={"workers": 4, "use_gpu": True, "env": nccl})
    write_job(tmp_path, job)
    _, sbatch, err = render(capsys, "slurm", "job.yml", "--nodes", "2", "--gpus-per-node", "2")
    assert err == "" or "warning" in err
    _, manifest, _ = render(
        capsys, "k8s", "job.yml", "--image", "registry.example/sr:1", "--workers", "2", "--gpus-per-worker", "2"
    )
    for text in (sbatch, manifest):
        assert "my-home" not in text and "my-laptop-profile" not in text and str(tmp_path / "credentials") not in text
        assert "SRCLUSTER_HOME" not in text and "AWS_PROFILE" not in text
        assert "ib0" in text and "mlx5" in text
    assert "export NCCL_SOCKET_IFNAME=ib0" in sbatch
    assert "export SRCLUSTER_ON_CLUSTER=1" in sbatch and "SRCLUSTER_ON_CLUSTER" in manifest  # cluster defaults

    assert "#SBATCH --signal=B:USR1@120" in sbatch and 'kill -USR1 "$DRIVER"' in sbatch
    assert sbatch.count('--cpus-per-task="$RAY_CPUS"') == 2  # the head's step and the workers'
    assert (
        "PORT_BLOCK=$((20000 + (SLURM_JOB_ID % 450) * 100))" in sbatch and "--temp-dir=/tmp/ray-$SLURM_JOB_ID" in sbatch
    )
    rayjob = next(doc for doc in yaml.safe_load_all(manifest) if doc and doc.get("kind") == "RayJob")
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True and rayjob["spec"]["ttlSecondsAfterFinished"] <= 60
    # explicit ports keep the old fixed layout (a site that reserves its ports)
    _, fixed, _ = render(capsys, "slurm", "job.yml", "--nodes", "2", "--gpus-per-node", "2", "--ray-port", "7000")
    assert "RAY_PORT=7000" in fixed and "PORT_BLOCK" not in fixed


def test_secret_names_in_the_jobs_env_are_refused_in_one_line(tmp_path):
    from srcluster.config import parse_job
    from srcluster.errors import ConfigError

    with pytest.raises(ConfigError, match=r"srcluster\.env.*AWS_SECRET_ACCESS_KEY looks like a secret") as error:
        parse_job(launch_job("bad-env", srcluster={"env": {"AWS_SECRET_ACCESS_KEY": "x"}}))
    assert "\n" not in str(error.value)


def test_worker_group_restarts_default_to_a_few_on_clusters_and_none_here(monkeypatch):
    from srcluster.config import parse_job
    from srcluster.train.stage import max_failures

    monkeypatch.delenv("SRCLUSTER_ON_CLUSTER", raising=False)
    assert max_failures(parse_job(launch_job("here"))) == 0
    monkeypatch.setenv("SRCLUSTER_ON_CLUSTER", "1")
    assert max_failures(parse_job(launch_job("there"))) == 3
    assert max_failures(parse_job(launch_job("set", srcluster={"workers": 1, "max_failures": 0}))) == 0

"""Run one stage on a simulated multi-node Ray cluster and take a node away mid-run (used by test_train_e2e).

    python tests/ray_nodes.py JOB.json   ->  last stdout line: {"run_id": ..., "iterations": ...}

Two nodes with one CPU each host one training worker each (the head has no CPUs for workers). Once the first
checkpoint exists, the second node is removed: its worker dies, and the elastic run continues on one node.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from srcluster.config import parse_job
from srcluster.storage import StorageSettings
from srcluster.train.stage import default_storage, recorded_checkpoints, run_key, run_stage


def main(spec: str) -> None:
    job = parse_job(json.loads(Path(spec).read_text()))
    with socket.socket() as probe:  # a free dashboard port: another Ray instance on this machine may hold 8265
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_port": dashboard_port})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    # RAY_ADDRESS for Ray Train's own actors: its placement-group cleaner finds "the" cluster through the state API,
    # and on a machine with several clusters it would otherwise pick the newest one
    ray.init(
        address=cluster.address,
        log_to_driver=True,
        configure_logging=False,
        runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}},
    )

    settings = StorageSettings.resolve()
    run_folder = f"{(job.srcluster.storage or default_storage(settings)).rstrip('/')}/{run_key(job)}"

    def remove_a_node_after_the_first_checkpoint() -> None:
        while not recorded_checkpoints(run_folder, settings):  # recorded by Ray, not merely uploaded
            time.sleep(0.5)
        print("removing a node", flush=True)
        cluster.remove_node(nodes[1])

    threading.Thread(target=remove_a_node_after_the_first_checkpoint, daemon=True).start()
    result = run_stage(job)
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps({"run_id": result.run_id, "iterations": result.iterations}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

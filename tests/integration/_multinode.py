"""Run by test_multinode.py in its own process (its own Ray): a head and three 1-CPU worker
nodes on this machine, a 2-worker DDP study; once the trial has a checkpoint, a node running
one of its workers is removed (not gracefully), leaving the spare node for the restarted worker
group. Prints a JSON summary on the last line."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def available_cpus(node_id: str) -> float:
    from ray._private.state import available_resources_per_node

    return available_resources_per_node().get(node_id, {}).get("CPU", 0.0)


def main(out: Path) -> None:
    from ray.cluster_utils import Cluster

    from pitfalls.config import parse_study
    from pitfalls.sweep.driver import run_study
    from pitfalls.sweep.runtime import DRIVER_RESOURCE
    from tests.helpers import tiny_study

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {DRIVER_RESOURCE: 10}, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]  # 2 for the trial, 1 spare
    cluster.wait_for_nodes()
    raw = tiny_study(name="multinode", budget={"epochs": 4, "steps_per_epoch": 6},
                     resources={"workers": 2, "cpus_per_worker": 1},
                     fault_tolerance={"trial_retries": 0, "worker_retries": 2})
    raw["search_space"]["factors"].update(norm=["group"], videos_per_batch=[2])
    spec = parse_study(raw)
    study_dir = out / "multinode"
    removed_at: list[float] = []

    def remove_a_worker_node_after_the_first_checkpoint() -> None:
        deadline = time.time() + 400
        while time.time() < deadline:
            if list((study_dir / "checkpoints").glob("*/epoch-*.pt")):
                time.sleep(1.0)
                busy = [n for n in workers if available_cpus(n.node_id) == 0]
                cluster.remove_node(busy[0], allow_graceful=False)  # a node running a worker dies
                removed_at.append(time.time())
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=remove_a_worker_node_after_the_first_checkpoint, daemon=True)
    watcher.start()
    outcome = run_study(spec, study_dir, address=cluster.address)
    watcher.join(timeout=5)
    print(json.dumps({"completed": outcome.completed, "failed": outcome.failed,
                      "unfinished": outcome.unfinished, "removed_at": removed_at,
                      "study_dir": str(study_dir)}))
    import ray

    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

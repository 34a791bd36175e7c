"""A node dies mid-trial: Ray Train restarts the worker group on the remaining nodes from the
last checkpoint, and the study completes (a cluster of a head and three worker nodes on this
machine, in its own process). Also the test of a 2-worker DDP trial in Ray Train."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_trial_survives_losing_a_worker_node(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.integration._multinode", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["removed_at"], "the node was never removed: no checkpoint appeared"
    assert summary["completed"] == 1 and summary["failed"] == 0, proc.stdout[-3000:]

    study_dir = tmp_path / "multinode"
    row = pq.read_table(study_dir / "results.parquet").to_pylist()[0]
    assert row["status"] == "completed" and len(row["curve_val_accuracy"]) == 4
    # Continued from the checkpoint: no epoch was reported twice (a restart from scratch would
    # report epoch 1 again), and epochs were reported after the node was lost. An epoch whose
    # report was cut by the loss (rank 0 saved it, the report barrier never completed) is not
    # re-run: it reaches Tune with the whole history at the last epoch, and MLflow from the
    # checkpoint's history.
    events = [json.loads(x) for x in (study_dir / "history.jsonl").read_text().splitlines()]
    single = [(e["time"], e["epochs"][0]["epoch"]) for e in events if len(e["epochs"]) == 1]
    epochs = [epoch for _, epoch in single]  # the last epoch arrives with the whole history
    assert len(epochs) == len(set(epochs)) and 4 not in epochs, events
    assert [m["epoch"] for m in events[-2]["epochs"]] == [1, 2, 3, 4], events
    # and it went on after the loss: epochs were trained and reported after the node was removed
    assert any(e["time"] > summary["removed_at"][0] for e in events if e["epochs"]), events

    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("multinode")
    child = client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'")
    assert len(child) == 1 and child[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child[0].info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4]
    # DDP in Ray Train: two workers, rank 0 alone logs (one value per epoch), and the Ray Train
    # run lives in the study directory
    sizes = client.get_metric_history(child[0].info.run_id, "world_size")
    assert sorted((m.step, m.value) for m in sizes) == [(e, 2.0) for e in (1, 2, 3, 4)]
    assert (study_dir / "train").is_dir()

"""Acceptance: a tracking server that goes away for a while does not fail a trial.

A real `mlflow server` (sqlite backend) is killed after the trial's first epoch has been logged
and restarted on the same port and store ~25 s later (5 s down, then its ~20 s start-up); the
epochs logged meanwhile wait in the trial's pending file and are re-sent once the server is
back. The study must end as if nothing happened: exit 0, the child run FINISHED, every epoch's
metrics in MLflow exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pitfalls.config.metrics import AFTER_TRAINING_METRICS
from tests.conftest import ROOT
from tests.helpers import tiny_study

pytestmark = pytest.mark.integration
EPOCHS = 30
STEPS = 100  # ~1.3 s per epoch on 2 cores: training outlasts the outage and the restart


def _first_logged_epoch(client: MlflowClient, experiment: str, proc: subprocess.Popen,
                        timeout_s: float) -> str:
    """Poll the server until the trial's child run has a logged epoch; return its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before its first epoch was logged"
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            for run in client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'"):
                if client.get_metric_history(run.info.run_id, "train_loss"):
                    return run.info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no epoch logged within {timeout_s} s")


def _count_pending(dirs) -> int:
    n = 0
    for d in dirs:
        for path in d.glob("*.jsonl") if d.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):  # sent and removed meanwhile
                n += sum(1 for line in path.read_text().splitlines() if line.strip())
    return n


def test_trial_survives_a_tracking_server_outage(tmp_path, mlflow_server_process):
    server = mlflow_server_process  # the session's server: killed here, and restarted

    raw = tiny_study(name="outage", budget={"epochs": EPOCHS, "steps_per_epoch": STEPS})
    raw["search_space"]["factors"]["norm"] = ["group"]
    study_file = tmp_path / "outage.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    study_dir = tmp_path / "runs" / "outage"
    cache = tmp_path / "cache"  # the logger's default pending dir goes under $XDG_CACHE_HOME
    pending_dirs = [study_dir / "logs" / "mlflow-pending", cache / "pitfalls" / "mlflow-pending"]
    output = open(tmp_path / "run.log", "w")  # noqa: SIM115 - the driver writes it until it ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "pitfalls.cli", "run", str(study_file), "--storage",
         str(tmp_path / "runs"), "--mlflow-uri", server.uri],
        stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)})

    most_pending, stop_watch = [0], threading.Event()

    def watch_pending():
        while not stop_watch.is_set():
            most_pending[0] = max(most_pending[0], _count_pending(pending_dirs))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_pending, daemon=True)
    t0 = time.monotonic()
    try:
        run_id = _first_logged_epoch(MlflowClient(server.uri), "outage", proc, timeout_s=240)
        first_epoch_s = time.monotonic() - t0
        watcher.start()
        server.stop(signal.SIGKILL)  # the server dies: connections are refused from now on
        time.sleep(5)
        assert proc.poll() is None, "the study ended during the outage; give it more epochs"
        restart_s = server.start()
        rc = proc.wait(timeout=300)
        stop_watch.set()
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id])
        histories = {key: [m.step for m in client.get_metric_history(run_id, key)]
                     for key in client.get_run(run_id).data.metrics}
    finally:
        stop_watch.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output.close()
        if server.proc is None:  # leave the session's server running for the other tests
            server.start()
    log = (tmp_path / "run.log").read_text()
    print(f"first epoch logged after {first_epoch_s:.0f} s, server down 5 s + {restart_s:.0f} s "
          f"restart, study done after {time.monotonic() - t0:.0f} s; at most {most_pending[0]} "
          f"record(s) pending")
    assert rc == 0, log[-4000:]
    assert most_pending[0] >= 1, "the outage never reached log_epoch"

    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("pitfalls.role") == "study"]
    assert [c.info.run_id for c in children] == [run_id]
    assert children[0].info.status == "FINISHED"
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(histories)
    once = set(AFTER_TRAINING_METRICS)  # the test split, selected_epoch: logged at the last epoch only
    for key, steps in histories.items():
        expected = [EPOCHS] if key in once else list(range(1, EPOCHS + 1))
        assert sorted(steps) == expected, (key, steps)  # every epoch, once
    assert _count_pending(pending_dirs) == 0, "records left unsent"

"""Acceptance: a tracking server that goes away does not fail a study, and nothing it missed is
lost or sent twice.

A real `mlflow server` (sqlite backend) is killed once the first trial has logged an epoch and
stays down until the study has ended: the first trial's later epochs, the whole second trial
(its run cannot even be created when it starts: trials run one at a time here), the trials'
ends and the study's own close all happen while it is down. The driver must end as usual
(exit 0, saying what waits), and once the server is back `pitfalls resume` sends everything:
one FINISHED run per trial, every epoch exactly once, the parent run FINISHED. A trial that
restarts during the outage (its logger cannot ask which epochs the run has) is played in this
process against the same server, on a run of its own.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pitfalls.cli import main
from pitfalls.config.metrics import AFTER_TRAINING_METRICS
from pitfalls.sweep.tracking import TrialLogger
from pitfalls.sweep.trial import EpochLog
from tests.helpers import tiny_study

pytestmark = pytest.mark.integration
EPOCHS = 3


def _first_logged_epoch(client: MlflowClient, experiment: str, timeout_s: float) -> None:
    """Poll the server until a trial's child run has a logged epoch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            for run in client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'"):
                if client.get_metric_history(run.info.run_id, "train_loss"):
                    return
        time.sleep(0.2)
    raise AssertionError(f"no epoch logged within {timeout_s} s")


def _epochs(first: int, last: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.1 * e} for e in range(first, last + 1)]


def test_a_study_outlives_a_tracking_server_outage_and_resume_sends_what_it_missed(
        tmp_path, mlflow_server_process, ray_session, capsys):
    server = mlflow_server_process  # the session's server: killed here, and restarted
    raw = tiny_study(name="outage", budget={"epochs": EPOCHS, "steps_per_epoch": 6},
                     resources={"workers": 1, "cpus_per_worker": 2})  # one trial at a time
    study_file = tmp_path / "outage.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    study_dir = tmp_path / "runs" / "outage"
    client = MlflowClient(server.uri)
    # A run of the test's own, for the restart played below: two epochs logged before the outage.
    restart_run = client.create_run(client.create_experiment("outage-restart")).info.run_id
    first_session = EpochLog(TrialLogger(server.uri, restart_run, tmp_path / "restart-pending"))
    for metrics in _epochs(1, 2):
        first_session.log(metrics)

    played: dict = {}

    def kill_the_server_then_play_a_restart() -> None:
        try:
            _first_logged_epoch(client, "outage", timeout_s=240)
            server.stop(signal.SIGKILL)  # connections are refused from now on
            # The restarted trial: which epochs its run has cannot be asked now (unknown, not
            # none); its checkpoint holds epochs 1-3, and it goes on to epoch 4.
            restarted = EpochLog(TrialLogger(server.uri, restart_run, tmp_path / "restart-pending",
                                             finish_wait_s=0))
            played.update(logged=restarted.logged, log=restarted)
            restarted.restore(_epochs(1, 3))
            restarted.log(_epochs(4, 4)[0])
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            played["error"] = e

    watcher = threading.Thread(target=kill_the_server_then_play_a_restart, daemon=True)
    watcher.start()
    capsys.readouterr()
    try:  # the driver runs here, on the session's Ray
        rc = main(["run", str(study_file), "--storage", str(tmp_path / "runs"), "--mlflow-uri", server.uri])
        log = capsys.readouterr()
        log = log.out + log.err
        watcher.join(timeout=60)
    finally:
        if server.proc is None:  # leave the session's server running for the other tests
            server.start()
    assert "error" not in played, played.get("error")
    assert played["logged"] is None  # unknown, not "none"
    restarted = played["log"]
    assert rc == 0, log[-4000:]  # every trial completed: the outage failed nothing
    assert "is unreachable; the study's run stays open there" in log and "pitfalls resume" in log, log[-3000:]
    assert "Traceback" not in log, log[-4000:]

    restarted.logger.finish()  # the server is back: the restart's records go, conditionally
    assert sorted(m.step for m in client.get_metric_history(restart_run, "train_loss")) == [1, 2, 3, 4]

    capsys.readouterr()
    assert main(["resume", str(study_dir)]) == 0, capsys.readouterr()
    resumed = capsys.readouterr().out
    assert "every trial had already finished" in resumed, resumed
    exp = client.get_experiment_by_name("outage")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("pitfalls.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["pitfalls.completed"] == "2"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    once = set(AFTER_TRAINING_METRICS)  # the test split, selected_epoch: logged at the last epoch only
    for child in children:  # its prediction files too, though they were written during the outage
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["predictions"]
        for key in client.get_run(child.info.run_id).data.metrics:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == ([EPOCHS] if key in once else list(range(1, EPOCHS + 1))), (key, steps)
    pending = list((study_dir / "logs" / "mlflow-pending").glob("*.jsonl"))
    assert not pending, [p.read_text()[:500] for p in pending]

"""MLflow unreachable at the moments the per-epoch buffer does not cover: a trial that starts (no
run yet), a trial that restarts (which epochs the run has is unknown), the study's end (the
parent run), a finished run met again, and a flush over many files (real sqlite store)."""

from __future__ import annotations

import time

import pyarrow.fs as pafs
import pytest
from mlflow.tracking import MlflowClient

from pitfalls.sweep.tracking import (
    PendingLog,
    RunCache,
    StudyRun,
    TrialLogger,
    close_study_run,
    end_stopped_trial_runs,
    flush_pending,
    open_trial_run,
)
from pitfalls.sweep.trial import EpochLog


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("outage")
    parent = client.create_run(exp, tags={"pitfalls.role": "study"}).info.run_id
    return uri, client, exp, parent


def _study(store, uri=None, study_id="s1") -> StudyRun:
    real, _, exp, parent = store
    return StudyRun(uri or real, exp, parent, study_id)


def _epochs(n: int, start: int = 1) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.1 * e} for e in range(start, n + 1)]


def _steps(client, run_id, key="train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_trial_started_while_the_server_is_down_gets_its_run_later(store, unreachable, tmp_path):
    uri, client, exp, _ = store
    opened = open_trial_run(_study(store, unreachable, "down-at-start"), "t1", "t1 norm=group",
                            {"norm": "group"})
    assert opened.run_id is None  # not an error: the trial trains on
    logger = TrialLogger(unreachable, None, tmp_path, ref=opened.ref, finish_wait_s=0)
    log = EpochLog(logger)
    assert log.logged is None
    for metrics in _epochs(3):
        log.log(metrics)
    logger.finish()
    assert flush_pending(uri, tmp_path) == (5, 0)  # the open record, 3 epochs, the end
    runs = client.search_runs([exp], "tags.`pitfalls.study_id` = 'down-at-start'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params == {"norm": "group"} and runs[0].data.tags["pitfalls.trial_id"] == "t1"
    assert _steps(client, runs[0].info.run_id) == [1, 2, 3]
    assert flush_pending(uri, tmp_path) == (0, 0) and not list(tmp_path.glob("*.jsonl"))


def test_a_trial_restarted_while_the_server_is_down_logs_no_epoch_twice(store, unreachable, tmp_path):
    uri, client, _, _ = store
    run_id = open_trial_run(_study(store, study_id="restart"), "t1", "t1", {}).run_id
    first = EpochLog(TrialLogger(uri, run_id, tmp_path))
    for metrics in _epochs(2):  # the first session logged epochs 1-2, then died
        first.log(metrics)
    restarted = EpochLog(TrialLogger(unreachable, run_id, tmp_path, finish_wait_s=0))
    assert restarted.logged is None  # unknown, not "none"
    restarted.restore(_epochs(3))  # the checkpoint holds 3 epochs: 1-2 are in MLflow already
    restarted.log(_epochs(4, 4)[0])
    restarted.logger.finish()
    assert flush_pending(uri, tmp_path)[1] == 0
    for key in ("train_loss", "val_accuracy"):
        assert _steps(client, run_id, key) == [1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_finished_run_is_not_reopened_and_keeps_its_end_time(store, tmp_path):
    uri, client, _, _ = store
    study = _study(store, study_id="finished")
    run_id = open_trial_run(study, "t1", "t1", {}).run_id
    TrialLogger(uri, run_id, tmp_path).finish()
    ended = client.get_run(run_id).info.end_time
    time.sleep(0.05)
    again = open_trial_run(study, "t1", "t1", {})  # Tune restarts it only to report its end
    assert again.run_id == run_id and again.finished
    assert client.get_run(run_id).info.status == "FINISHED"
    TrialLogger(uri, run_id, tmp_path).finish()
    assert client.get_run(run_id).info.end_time == ended


def test_the_run_cache_finds_a_restarted_trial_without_a_search(store, tmp_path, monkeypatch):
    uri, client, _, _ = store
    cache = RunCache(pafs.LocalFileSystem(), f"{tmp_path}/ckpt/t1/mlflow-run.json")
    searches = []
    real_search = MlflowClient.search_runs
    monkeypatch.setattr(MlflowClient, "search_runs",
                        lambda self, *a, **k: searches.append(a) or real_search(self, *a, **k))
    study = _study(store, study_id="cached")
    first = open_trial_run(study, "t1", "t1", {}, cache)
    assert searches == []  # a new trial: nothing to find
    assert open_trial_run(study, "t1", "t1", {}, cache).run_id == first.run_id
    assert searches == []  # found by its cached id
    cache.write({"opening": True, "tracking_uri": uri})  # killed between the mark and the id
    assert open_trial_run(study, "t1", "t1", {}, cache).run_id == first.run_id
    assert len(searches) == 1  # searched, and found: no second run
    assert len(client.search_runs([study.experiment_id], "tags.`pitfalls.study_id` = 'cached'")) == 1


def test_the_study_run_closes_later_when_the_server_is_down_at_the_end(store, unreachable, tmp_path):
    uri, client, exp, _ = store
    parent = client.create_run(exp, tags={"pitfalls.role": "study"}).info.run_id
    report = tmp_path / "comparison.md"
    report.write_text("| table |\n")
    down = StudyRun(unreachable, exp, parent, "end")
    t0 = time.monotonic()
    left = close_study_run(down, "FINISHED", [report], tags={"pitfalls.completed": 4},
                           pending_dir=tmp_path / "pending")
    assert left == 2 and time.monotonic() - t0 < 30  # no exception, no minutes of retries
    assert client.get_run(parent).info.status == "RUNNING"
    assert flush_pending(uri, tmp_path / "pending") == (2, 0)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["pitfalls.completed"] == "4"
    assert [a.path for a in client.list_artifacts(parent)] == ["comparison.md"]


def test_a_flush_against_a_dead_server_stops_at_the_first_failure(store, unreachable, tmp_path):
    for i in range(20):
        PendingLog(tmp_path, f"{i:032x}").append({"id": "a", "type": "params", "params": {"x": 1}})
    t0 = time.monotonic()
    assert flush_pending(unreachable, tmp_path, timeout_s=2) == (0, 20)
    assert time.monotonic() - t0 < 15  # one file's failure, not 20 timeouts


def test_trial_runs_left_running_by_a_stopped_session_are_marked_killed(store, tmp_path):
    uri, client, _, _ = store
    study = _study(store, study_id="stopped")
    stopped = open_trial_run(study, "t1", "t1", {}).run_id  # Tune stopped it before it could say so
    done = open_trial_run(study, "t2", "t2", {}).run_id
    TrialLogger(uri, done, tmp_path).finish()
    other = open_trial_run(_study(store, study_id="another-study"), "t1", "t1", {}).run_id
    assert end_stopped_trial_runs(study) == 1
    assert client.get_run(stopped).info.status == "KILLED"
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(other).info.status == "RUNNING"  # another study's run is not touched

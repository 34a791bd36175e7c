"""TrialLogger against an unreachable tracking server: quick calls, records kept in the pending
file with their steps and timestamps, sent later in order and exactly once (real sqlite store)."""

from __future__ import annotations

import json
import logging
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pitfalls.sweep.tracking import PendingLog, TrialLogger, default_pending_dir, flush_pending


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real local MLflow store (sqlite) with one experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("buffer")


@pytest.fixture
def run_id(store):
    _, client, exp = store
    return client.create_run(exp).info.run_id


class Flaky:
    """A real client whose first `failures` calls fail as if the server were down."""

    def __init__(self, client: MlflowClient, failures: int):
        self.client, self.failures, self.calls = client, failures, []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("connection refused")
            return getattr(self.client, name)(*args, **kwargs)
        return call


def _history(client, run_id, key="loss"):
    return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


def test_unreachable_server_is_quick_and_everything_is_sent_later(store, run_id, unreachable, tmp_path):
    uri, client, _ = store
    pending = tmp_path / "pending"
    logger = TrialLogger(unreachable, run_id, pending, finish_wait_s=0)
    for epoch in (1, 2, 3):
        t0 = time.monotonic()
        logger.log_epoch({"epoch": epoch, "loss": 1.0 / epoch, "acc": epoch / 10, "note": "x"})
        assert time.monotonic() - t0 < 5, "a call to an unreachable server must return quickly"
    t0 = time.monotonic()
    logger.finish()
    assert time.monotonic() - t0 < 5

    path = pending / f"{run_id}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in records] == ["metrics"] * 3 + ["end"]
    assert [r["step"] for r in records[:3]] == [1, 2, 3]
    assert records[0]["metrics"] == {"loss": 1.0, "acc": 0.1}  # numbers only, not the epoch
    assert records[3]["status"] == "FINISHED"
    assert client.get_metric_history(run_id, "loss") == []  # nothing reached the store

    t0 = time.monotonic()
    assert flush_pending(unreachable, pending) == (0, 4)  # still down: nothing lost
    assert time.monotonic() - t0 < 5

    copy = path.read_text()
    assert flush_pending(uri, pending) == (4, 0)
    assert not path.exists()
    expected = [(r["step"], r["metrics"]["loss"], r["timestamp"]) for r in records[:3]]
    assert _history(client, run_id) == expected  # original steps and timestamps
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == records[3]["end_time"]

    assert flush_pending(uri, pending) == (0, 0)
    path.write_text(copy)  # as if the first answers had been lost and everything is sent again
    assert flush_pending(uri, pending) == (4, 0)
    assert _history(client, run_id) == expected, "a record sent twice duplicated the history"


def test_later_calls_send_pending_records_first(store, run_id, tmp_path):
    uri, client, _ = store
    logger = TrialLogger(uri, run_id, tmp_path, finish_wait_s=0, retry_every_s=0)
    logger.client = Flaky(client, failures=2)
    logger.log_epoch({"epoch": 1, "loss": 3.0})  # fails: kept
    logger.log_epoch({"epoch": 2, "loss": 2.0})  # epoch 1 is re-sent first and fails again
    assert len(PendingLog(tmp_path, run_id)) == 2
    logger.log_epoch({"epoch": 3, "loss": 1.0})  # the server is back: 1, 2, then 3
    assert len(PendingLog(tmp_path, run_id)) == 0
    assert [(s, v) for s, v, _ in _history(client, run_id)] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    logger.finish()
    assert client.get_run(run_id).info.status == "FINISHED"


def test_after_a_failure_epochs_are_only_appended_for_a_while(store, run_id, tmp_path):
    """A server that hangs costs each attempt its timeout: don't pay it at every epoch."""
    uri, client, _ = store
    logger = TrialLogger(uri, run_id, tmp_path, finish_wait_s=0, retry_every_s=60)
    logger.client = flaky = Flaky(client, failures=1)
    for epoch in (1, 2, 3):
        logger.log_epoch({"epoch": epoch, "loss": 1.0 / epoch})
    assert flaky.calls == ["log_batch"] and len(PendingLog(tmp_path, run_id)) == 3
    logger.finish()  # the end always tries: everything goes, in order
    assert [s for s, _, _ in _history(client, run_id)] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_finish_waits_for_the_server_to_come_back(store, run_id, tmp_path):
    uri, client, _ = store
    logger = TrialLogger(uri, run_id, tmp_path, finish_wait_s=10)
    logger.client = Flaky(client, failures=3)
    logger.log_epoch({"epoch": 1, "loss": 1.0})
    logger.finish()  # fails twice more, then sends epoch 1 and the end within the wait
    assert not (tmp_path / f"{run_id}.jsonl").exists()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "loss")) == 1


def test_records_left_after_finish_are_reported(store, run_id, unreachable, tmp_path, caplog):
    logger = TrialLogger(unreachable, run_id, tmp_path, finish_wait_s=0)
    logger.log_epoch({"epoch": 1, "loss": 1.0})
    with caplog.at_level(logging.WARNING, logger="pitfalls.sweep.tracking"):
        logger.finish()
    assert f"2 record(s) of run {run_id} could not be sent" in caplog.text
    assert str(tmp_path / f"{run_id}.jsonl") in caplog.text


def test_fail_never_raises_and_keeps_the_error(store, run_id, unreachable, tmp_path):
    uri, client, _ = store
    logger = TrialLogger(unreachable, run_id, tmp_path, finish_wait_s=0)
    logger.fail(ValueError("bad batch"))
    assert flush_pending(uri, tmp_path) == (1, 0)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "ValueError: bad batch" in run.data.tags["pitfalls.error"]

    other = client.create_run(store[2]).info.run_id
    t0 = time.monotonic()
    TrialLogger(unreachable, other, tmp_path, finish_wait_s=60).fail(KeyboardInterrupt())
    assert time.monotonic() - t0 < 5, "a stopped trial must not wait for the server"
    assert flush_pending(uri, tmp_path) == (1, 0)
    assert client.get_run(other).info.status == "KILLED"


def test_a_rejected_request_raises_as_before(store, tmp_path):
    uri, _, _ = store
    logger = TrialLogger(uri, "0" * 32, tmp_path)  # no such run: the store rejects it (404)
    with pytest.raises(MlflowException):
        logger.log_epoch({"epoch": 1, "loss": 1.0})
    assert not (tmp_path / f"{'0' * 32}.jsonl").exists()


def test_a_torn_last_line_does_not_corrupt_other_records(store, run_id, tmp_path):
    uri, client, _ = store
    log = PendingLog(tmp_path, run_id)
    log.append({"id": "a", "type": "metrics", "step": 1, "timestamp": 1000, "metrics": {"loss": 1.0}})
    with open(log.path, "a") as f:
        f.write('{"id": "b", "type": "metr')  # a crash in the middle of a write
    log.append({"id": "c", "type": "metrics", "step": 2, "timestamp": 2000, "metrics": {"loss": 0.5}})
    assert [r["id"] for r in log.records()] == ["a", "c"]
    assert flush_pending(uri, tmp_path) == (2, 0)
    assert [(s, v) for s, v, _ in _history(client, run_id)] == [(1, 1.0), (2, 0.5)]


def test_default_pending_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_pending_dir() == tmp_path / "pitfalls" / "mlflow-pending"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(default_pending_dir()).endswith(".cache/pitfalls/mlflow-pending")

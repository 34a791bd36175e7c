"""MLflow tracking with our own run identity: study = parent run, trial = child run.

Runs are found or created by stable tags (`pitfalls.study_id`, `pitfalls.trial_id`) rather than
by Ray's in-memory state, so a retried or resumed trial continues its run instead of creating a
duplicate. Exactly one process writes a trial's run (the trial driver, or rank 0 under DDP).
Uses `MlflowClient` with explicit run ids: no global "active run" state crossing processes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from pitfalls.fileio import atomic_write

STUDY_TAG = "pitfalls.study_id"
TRIAL_TAG = "pitfalls.trial_id"
ROLE_TAG = "pitfalls.role"


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None. Any HTTP answer counts as
    reachable; MLflow's own client would instead retry for minutes before failing."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))
    return None


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class StudyRun:
    """Where a study's runs live; small and picklable, handed to every trial."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study_id: str


def open_study_run(tracking_uri: str, experiment: str, study_id: str, params: dict,
                   artifact_location: str | None = None) -> StudyRun:
    """Find or create the experiment and the study's parent run (tagged with `study_id`)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=artifact_location)
    found = client.search_runs([exp_id], f"tags.`{STUDY_TAG}` = '{study_id}' and "
                                         f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(exp_id, run_name=study_id,
                                tags={STUDY_TAG: study_id, ROLE_TAG: "study"})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return StudyRun(tracking_uri, exp_id, run_id, study_id)


def close_study_run(study: StudyRun, status: str, artifacts: list[Path] = (), tags: dict | None = None) -> None:
    client = MlflowClient(study.tracking_uri)
    for path in artifacts:
        client.log_artifact(study.parent_run_id, str(path))
    for k, v in (tags or {}).items():
        client.set_tag(study.parent_run_id, k, str(v))
    client.set_terminated(study.parent_run_id, status)


def open_trial_run(study: StudyRun, trial_id: str, run_name: str, params: dict) -> str:
    """Find the trial's child run by its tags, or create it with the flat params; return its id."""
    client = MlflowClient(study.tracking_uri)
    found = client.search_runs(
        [study.experiment_id],
        f"tags.`{STUDY_TAG}` = '{study.study_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(study.experiment_id, run_name=run_name, tags={
        "mlflow.parentRunId": study.parent_run_id, STUDY_TAG: study.study_id,
        TRIAL_TAG: trial_id, ROLE_TAG: "trial"})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


# ---------------------------------------------------------------------------------------------
# Per-trial logging that survives a briefly unreachable tracking server.
#
# Every call first re-sends what is pending, then sends its own record; a record that cannot be
# sent (connection refused, timeout, 5xx) is appended to `<pending_dir>/<run_id>.jsonl` and
# training goes on. Records keep their original step and timestamp, and MLflow's SQL stores
# ignore a metric identical in (key, step, timestamp, value) to one already logged, so a record
# sent twice (e.g. the answer was lost) leaves the history unchanged.

#: MLflow's HTTP client settings for TrialLogger's and flush_pending's calls only (MLflow reads
#: them per request; its defaults retry for minutes): one quick retry, then give up.
QUICK_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
PENDING_SUFFIX = ".jsonl"
_env_lock = threading.RLock()
_log = logging.getLogger(__name__)


def default_pending_dir() -> Path:
    """Where a TrialLogger given no `pending_dir` keeps unsent records:
    `$XDG_CACHE_HOME/pitfalls/mlflow-pending`, else `~/.cache/pitfalls/mlflow-pending`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pitfalls" / "mlflow-pending"


@contextmanager
def _quick_http(tracking_uri: str, timeout_s: int):
    """Short HTTP timeout and retries for the calls inside (process-wide while they run)."""
    if not tracking_uri.startswith(("http://", "https://")):
        yield
        return
    settings = {**QUICK_HTTP_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s))}
    with _env_lock:
        saved = {k: os.environ.get(k) for k in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _is_transient(error: Exception) -> bool:
    """Worth retrying later: no answer, a timeout or a server-side error. A request the server
    rejects (4xx: unknown run, invalid value, unauthorized) is not."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status in (408, 429)
    return True


def _describe(error: Exception) -> str:
    """One line, with any `user:password@` of a URL masked."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0][:240]
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def _dir_lock(directory: Path) -> FileLock:
    """The pending directory's lock: a logger appending and a flush in another process never
    interleave (a lock file next to the records)."""
    return FileLock(directory / ".lock")


class PendingLog:
    """One run's unsent records: `<directory>/<run_id>.jsonl`, one JSON object per line.

    Appending is one `write` + `fsync` of a whole line, so a crash can at worst tear the line
    being written (a torn line is skipped when read, and never glued to the next record); sent
    records are removed by rewriting the rest atomically (`pitfalls.fileio`), so earlier
    records are never half-rewritten. Both hold the directory's lock (`filelock`), so a
    `flush_pending` in another process never loses a record the logger is appending.
    """

    def __init__(self, directory: Path, run_id: str):
        self.directory = Path(directory)
        self.run_id = run_id
        self.path = self.directory / f"{run_id}{PENDING_SUFFIX}"

    def append(self, record: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with _dir_lock(self.directory):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # the previous write was torn: keep this record whole
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def records(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn line: its write never completed, so no caller relied on it
        return out

    def drop(self, ids: set[str]) -> None:
        """Remove the records with these ids (sent); the file goes when nothing is left."""
        with _dir_lock(self.directory):
            rest = [r for r in self.records() if r.get("id") not in ids]
            if not rest:
                self.path.unlink(missing_ok=True)
                return
            atomic_write(self.path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rest))

    def __len__(self) -> int:
        return len(self.records())


def _send(client: MlflowClient, run_id: str, record: dict) -> None:
    if record["type"] == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), record["timestamp"], record["step"])
                                          for k, v in record["metrics"].items()])
    elif record["type"] == "params":
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in record["params"].items()])
    elif record["type"] == "end":
        if record.get("tags"):
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"unknown pending record type {record['type']!r} in run {run_id}")


def _flush_log(client: MlflowClient, log: PendingLog) -> tuple[int, int, Exception | None]:
    """Send a run's pending records in order until one fails: (sent, left, the failure)."""
    records = log.records()
    sent: set[str] = set()
    error = None
    for record in records:
        try:
            _send(client, log.run_id, record)
        except Exception as e:  # noqa: BLE001 - every failure keeps the record; callers judge it
            error = e
            break
        sent.add(record["id"])
    if sent:
        log.drop(sent)
    return len(sent), len(records) - len(sent), error


def flush_pending(tracking_uri: str, pending_dir: Path | str | None = None, *,
                  timeout_s: int = 5) -> tuple[int, int]:
    """Send every run's pending records in `pending_dir` (default: `default_pending_dir()`) to
    `tracking_uri`, oldest first; return (records sent, records left). Never raises for a
    record it cannot send: that record and the ones after it stay, and a warning names them."""
    directory = Path(pending_dir) if pending_dir is not None else default_pending_dir()
    files = sorted(directory.glob(f"*{PENDING_SUFFIX}")) if directory.is_dir() else []
    if not files:
        return 0, 0
    client = MlflowClient(tracking_uri)
    sent = left = 0
    with _quick_http(tracking_uri, timeout_s):
        for path in files:
            s, n, error = _flush_log(client, PendingLog(directory, path.name[:-len(PENDING_SUFFIX)]))
            sent, left = sent + s, left + n
            if error is not None:
                _log.warning("mlflow: %d record(s) of run %s not sent (%s); they stay in %s",
                             n, path.name[:-len(PENDING_SUFFIX)], _describe(error), path)
    return sent, left


class TrialLogger:
    """Logs one trial's per-epoch metrics (step = our epoch, stable across restarts) and its end.

    A briefly unreachable tracking server does not fail the trial: each call tries once with a
    short timeout (`timeout_s`, one quick retry), and what it cannot send is kept in
    `<pending_dir>/<run_id>.jsonl` (default: `default_pending_dir()`); every later call first
    re-sends those records in order (after a failure, `log_epoch` tries again only once
    `retry_every_s` have passed, so a server that hangs does not stall every epoch).
    `finish`/`fail` keep trying for up to `finish_wait_s`; what is still unsent then stays in
    the file (a warning names it and the count) for `flush_pending`. A request the server
    rejects (4xx) raises as before.
    """

    def __init__(self, tracking_uri: str, run_id: str, pending_dir: Path | str | None = None, *,
                 timeout_s: int = 5, finish_wait_s: float = 60.0, retry_every_s: float = 10.0):
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.pending = PendingLog(Path(pending_dir) if pending_dir is not None
                                  else default_pending_dir(), run_id)
        self.timeout_s = timeout_s
        self.finish_wait_s = finish_wait_s
        self.retry_every_s = retry_every_s
        self._buffering = False
        self._next_try = 0.0  # time.monotonic() before which log_epoch only appends

    def log_epoch(self, metrics: dict) -> None:
        values = {k: float(v) for k, v in metrics.items()
                  if k != "epoch" and isinstance(v, (int, float))}
        record = {"type": "metrics", "step": int(metrics["epoch"]),
                  "timestamp": int(time.time() * 1000), "metrics": values}
        if time.monotonic() < self._next_try:  # failed a moment ago: don't wait on it again
            self.pending.append({"id": uuid.uuid4().hex, **record})
            return
        self._submit(record)

    def log_params(self, params: dict) -> None:
        """Params known only once the trial runs (the fast path its device resolved). A value
        that differs from the one already logged (a trial resumed on another kind of device)
        is rejected by MLflow (params cannot change): a warning, not a failed trial."""
        try:
            self._submit({"type": "params", "params": params})
        except Exception as e:  # noqa: BLE001 - rejected (4xx): not worth failing a trial over
            self.pending.drop({r["id"] for r in self.pending.records() if r["type"] == "params"})
            _log.warning("mlflow: params %s not logged to run %s: %s", params, self.run_id,
                         _describe(e))

    def log_artifacts(self, local: Path, artifact_path: str) -> None:
        """Files as the run's artifacts; a failure is a warning (they are in the study's storage
        too), never a failed trial."""
        try:
            with _quick_http(self.tracking_uri, max(self.timeout_s, 60)):
                self.client.log_artifacts(self.run_id, str(local), artifact_path)
        except Exception as e:  # noqa: BLE001 - artifacts are a copy; the storage holds them
            _log.warning("mlflow: artifacts %s not logged to run %s: %s", artifact_path, self.run_id,
                         _describe(e))

    def finish(self) -> None:
        self._submit(self._end(RunStatus.FINISHED), wait_s=self.finish_wait_s)

    def fail(self, error: BaseException) -> None:
        """FAILED with the error as a tag; KILLED when the trial was stopped, not broken (then
        without waiting for the server). Never raises: it runs on the trial's error path."""
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            record, wait_s = self._end(RunStatus.KILLED), 0.0
        else:
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            record = self._end(RunStatus.FAILED, {"pitfalls.error": text[:5000]})
            wait_s = self.finish_wait_s
        try:
            self._submit(record, wait_s=wait_s)
        except Exception as e:  # noqa: BLE001 - the trial's own error is the one to raise
            _log.warning("mlflow: could not mark run %s %s: %s", self.run_id, record["status"],
                         _describe(e))

    def logged_steps(self, key: str) -> set[int] | None:
        """The steps of `key` the run has once this run's pending records are sent (their steps
        included), or None when the server cannot be asked now (short timeout, as above)."""
        pending = {int(r["step"]) for r in self.pending.records()
                   if r["type"] == "metrics" and key in r["metrics"]}
        try:
            self._flush()
            with _quick_http(self.tracking_uri, self.timeout_s):
                history = self.client.get_metric_history(self.run_id, key)
        except Exception as e:
            if not _is_transient(e):
                raise
            return None
        return pending | {m.step for m in history}

    def _end(self, status: int, tags: dict | None = None) -> dict:
        return {"type": "end", "status": RunStatus.to_string(status),
                "end_time": int(time.time() * 1000), "tags": tags or {}}

    def _submit(self, record: dict, wait_s: float = 0.0) -> None:
        record = {"id": uuid.uuid4().hex, **record}
        error = self._flush()
        if error is None:
            try:
                with _quick_http(self.tracking_uri, self.timeout_s):
                    _send(self.client, self.run_id, record)
                return
            except Exception as e:
                if not _is_transient(e):
                    raise
                error = e
        self.pending.append(record)
        if not _is_transient(error):
            raise error  # a pending record was rejected (e.g. the run was deleted)
        self._next_try = time.monotonic() + self.retry_every_s
        if not self._buffering:
            self._buffering = True
            _log.warning("mlflow: cannot log to run %s now (%s); keeping its records in %s and "
                         "training on", self.run_id, _describe(error), self.pending.path)
        deadline = time.monotonic() + wait_s
        while error is not None and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            error = self._flush()
        if error is not None and record["type"] == "end":
            _log.warning("mlflow: %d record(s) of run %s could not be sent (%s); they stay in %s "
                         "(send them with pitfalls.sweep.tracking.flush_pending)",
                         len(self.pending), self.run_id, _describe(error), self.pending.path)

    def _flush(self) -> Exception | None:
        """Send this run's pending records, oldest first; the failure that stopped it, if any."""
        if not self.pending.path.exists():
            return None
        with _quick_http(self.tracking_uri, self.timeout_s):
            sent, left, error = _flush_log(self.client, self.pending)
        if not left and self._buffering:
            self._buffering, self._next_try = False, 0.0
            _log.warning("mlflow: run %s reachable again; sent %d buffered record(s)",
                         self.run_id, sent)
        return error

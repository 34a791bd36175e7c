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
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from pitfalls.fileio import atomic_write
from pitfalls.sweep.credentials import redact

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


def close_study_run(study: StudyRun, status: str, artifacts: list[Path] = (), tags: dict | None = None,
                    pending_dir: Path | str | None = None, timeout_s: int = 5) -> int:
    """Log the study's artifacts and tags and end its parent run; return how many records could
    not be sent (0 when all went). It runs when the study ends however it ends, so it never
    raises for an unreachable server: what it cannot send waits in `pending_dir` (default:
    `default_pending_dir()`) for `flush_pending` (`pitfalls resume` runs it)."""
    log = PendingLog(Path(pending_dir) if pending_dir is not None else default_pending_dir(),
                     study.parent_run_id)
    if artifacts:
        log.append({"id": uuid.uuid4().hex, "type": "artifacts", "paths": [str(p) for p in artifacts]})
    log.append({"id": uuid.uuid4().hex, "type": "end", "status": status,
                "end_time": int(time.time() * 1000), "tags": tags or {}})
    with _quick_http(study.tracking_uri, timeout_s):
        _, left, error, _ = _flush_log(MlflowClient(study.tracking_uri), log)
    if error is not None:
        _log.warning("mlflow: the study's run %s not closed (%s); %d record(s) stay in %s",
                     study.parent_run_id, _describe(error), left, log.path)
    return left


def end_stopped_trial_runs(study: StudyRun, timeout_s: int = 5) -> int:
    """Mark KILLED the study's trial runs still RUNNING once its driver's session is over (a
    trial Tune stopped before its own logger could say so, e.g. on SIGTERM); return how many.
    Best effort: an unreachable server leaves them for the next session's end."""
    client = MlflowClient(study.tracking_uri)
    try:
        with _quick_http(study.tracking_uri, timeout_s):
            runs = client.search_runs(
                [study.experiment_id], f"tags.`{STUDY_TAG}` = '{study.study_id}' and "
                f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'RUNNING'")
            for run in runs:
                client.set_terminated(run.info.run_id, "KILLED")
    except Exception as e:  # noqa: BLE001 - the study's end must not fail on it
        _log.warning("mlflow: could not mark stopped trial runs KILLED: %s", _describe(e))
        return 0
    return len(runs)


@dataclass(frozen=True)
class TrialRunRef:
    """What finds or creates a trial's child run (by its tags): kept in the trial's pending file
    when the server cannot be reached at trial start, so the run is created when it can."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study_id: str
    trial_id: str
    run_name: str
    params: dict

    @property
    def key(self) -> str:
        """The name of the pending file of a trial whose run id is not known yet."""
        return f"{TRIAL_KEY_PREFIX}{self.study_id}-{self.trial_id}"


TRIAL_KEY_PREFIX = "trial-"


def _search_trial_run(client: MlflowClient, ref: TrialRunRef):
    found = client.search_runs(
        [ref.experiment_id],
        f"tags.`{STUDY_TAG}` = '{ref.study_id}' and tags.`{TRIAL_TAG}` = '{ref.trial_id}'",
        max_results=1)
    return found[0] if found else None


def _create_trial_run(client: MlflowClient, ref: TrialRunRef) -> str:
    run = client.create_run(ref.experiment_id, run_name=ref.run_name, tags={
        "mlflow.parentRunId": ref.parent_run_id, STUDY_TAG: ref.study_id,
        TRIAL_TAG: ref.trial_id, ROLE_TAG: "trial"})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in ref.params.items()])
    return run.info.run_id


def _find_or_create(client: MlflowClient, ref: TrialRunRef) -> tuple[str, str]:
    """(run id, status) of the trial's run, created when no run carries its tags."""
    found = _search_trial_run(client, ref)
    if found is not None:
        return found.info.run_id, found.info.status
    return _create_trial_run(client, ref), "RUNNING"


@dataclass(frozen=True)
class RunCache:
    """A trial's run id, kept next to its checkpoints (`fs`, `path`): a restarted trial finds
    its run with one request by id, instead of a tag search whose cost grows with the
    experiment. An `opening` mark written before the run is created tells a trial restarted in
    between to search (the run may exist), and a trial with no file at all that it is new."""

    fs: pyarrow.fs.FileSystem
    path: str

    def read(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None
        except OSError:
            if self.fs.get_file_info(self.path).type == pyarrow.fs.FileType.NotFound:
                return None
            raise

    def fresh(self) -> bool:
        """Nothing of the trial is stored yet (no mark, no checkpoint): its run cannot exist."""
        directory = self.path.rsplit("/", 1)[0]
        return not self.fs.get_file_info(pyarrow.fs.FileSelector(directory, allow_not_found=True))

    def write(self, data: dict) -> None:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(data).encode())


@dataclass(frozen=True)
class OpenedRun:
    run_id: str | None  # None: the server could not be reached; `ref` creates the run later
    ref: TrialRunRef
    finished: bool = False  # the run was FINISHED already: nothing reopens or re-ends it


def open_trial_run(study: StudyRun, trial_id: str, run_name: str, params: dict,
                   cache: RunCache | None = None, timeout_s: int = 5) -> OpenedRun:
    """Find the trial's child run (by the cache, else by its tags) or create it with the flat
    params. A FINISHED run stays as it is (a trial Tune restarts only to report its end again);
    any other is marked RUNNING. An unreachable server is not an error: the run's id is then
    unknown (or only cached) and `TrialLogger` creates or finds it once the server answers."""
    ref = TrialRunRef(study.tracking_uri, study.experiment_id, study.parent_run_id, study.study_id,
                      trial_id, run_name, dict(params))
    client = MlflowClient(study.tracking_uri)
    cached = cache.read() if cache is not None else None
    if cached is not None and cached.get("tracking_uri") != study.tracking_uri:
        cached = {"opening": True}  # another server than the one cached: search it
    run_id = cached.get("run_id") if cached else None
    try:
        with _quick_http(study.tracking_uri, timeout_s):
            status = _status(client, run_id) if run_id else None
            if status is None:  # not cached, or the cached run is gone
                if cache is not None and cached is None and cache.fresh():  # a new trial
                    cache.write({"opening": True, "tracking_uri": study.tracking_uri})
                    run_id, status = _create_trial_run(client, ref), "RUNNING"
                else:
                    run_id, status = _find_or_create(client, ref)
                if cache is not None:
                    cache.write({"run_id": run_id, "tracking_uri": study.tracking_uri})
            if status != "FINISHED":
                client.update_run(run_id, status="RUNNING")
    except Exception as e:
        if not _is_transient(e):
            raise
        _log.warning("mlflow: cannot open the run of trial %s now (%s); its records wait in its "
                     "pending file and the run is opened when the server answers", trial_id,
                     _describe(e))
        return OpenedRun(run_id, ref)
    return OpenedRun(run_id, ref, finished=status == "FINISHED")


def _status(client: MlflowClient, run_id: str) -> str | None:
    """The run's status, or None when it no longer exists (deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.status
    except MlflowException as e:
        if e.get_http_status_code() == 404 or "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
            return None
        raise


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
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return redact(text)[:240]  # masked before it is cut: a cut could hide the password's end


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


def _send(client: MlflowClient, run_id: str, record: dict, seen: dict[str, set[int]]) -> None:
    """Send one record. Two kinds are conditional, so that sending them again changes nothing:
    metrics marked `if_missing` (logged while it was unknown which epochs the run has) are
    skipped for a step the run has already (`seen` caches each key's steps for one flush), and
    an `end` never touches a run that is FINISHED already (its end time stays true)."""
    kind = record["type"]
    if kind == "metrics":
        if key := record.get("if_missing"):
            if key not in seen:
                seen[key] = {m.step for m in client.get_metric_history(run_id, key)}
            if int(record["step"]) in seen[key]:
                return
            seen[key].add(int(record["step"]))
        client.log_batch(run_id, metrics=[Metric(k, float(v), record["timestamp"], record["step"])
                                          for k, v in record["metrics"].items()])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in record["params"].items()])
    elif kind == "artifacts" and "dir" in record:
        if Path(record["dir"]).is_dir():
            client.log_artifacts(run_id, record["dir"], record["artifact_path"])
    elif kind == "artifacts":
        for path in record["paths"]:
            if Path(path).is_file():  # a report rewritten or removed since is sent by its own record
                client.log_artifact(run_id, path)
    elif kind == "end":
        if client.get_run(run_id).info.status == "FINISHED":
            return
        if record.get("tags"):
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"unknown pending record type {kind!r} in run {run_id}")


def _flush_log(client: MlflowClient, log: PendingLog, run_id: str | None = None
               ) -> tuple[int, int, Exception | None, str | None]:
    """Send a run's pending records in order until one fails: (sent, left, the failure, the
    run id). A file named by a trial (its run not created yet) starts with an `open` record,
    which finds or creates the run; it is dropped with the last record it precedes."""
    records = log.records()
    if run_id is None and not log.run_id.startswith(TRIAL_KEY_PREFIX):
        run_id = log.run_id
    sent: set[str] = set()
    opener, error, seen = None, None, {}
    for record in records:
        try:
            if record["type"] == "open":
                opener = record["id"]
                if run_id is None:
                    run_id, _ = _find_or_create(client, TrialRunRef(**record["ref"]))
                continue
            if run_id is None:
                raise ValueError(f"{log.path} has no open record: its run cannot be found")
            _send(client, run_id, record, seen)
        except Exception as e:  # noqa: BLE001 - every failure keeps the record; callers judge it
            error = e
            break
        sent.add(record["id"])
    if opener is not None and error is None:  # everything after it went
        sent.add(opener)
    if sent:
        log.drop(sent)
    return len(sent), len(records) - len(sent), error, run_id


def flush_pending(tracking_uri: str, pending_dir: Path | str | None = None, *,
                  timeout_s: int = 5, deadline_s: float = 60.0) -> tuple[int, int]:
    """Send every run's pending records in `pending_dir` (default: `default_pending_dir()`) to
    `tracking_uri`, oldest first; return (records sent, records left). Never raises for a
    record it cannot send: that record and the ones after it stay, and a warning names them.
    The first failure that says the server is unreachable ends the flush (each further file
    would wait for the same timeout), and so does `deadline_s`: the flush takes at most about
    that long however many files wait."""
    directory = Path(pending_dir) if pending_dir is not None else default_pending_dir()
    files = sorted(directory.glob(f"*{PENDING_SUFFIX}")) if directory.is_dir() else []
    if not files:
        return 0, 0
    client = MlflowClient(tracking_uri)
    sent = left = 0
    deadline = time.monotonic() + deadline_s
    stopped = None
    with _quick_http(tracking_uri, timeout_s):
        for path in files:
            log = PendingLog(directory, path.name[:-len(PENDING_SUFFIX)])
            if stopped is not None or time.monotonic() > deadline:
                left += len(log)
                continue
            s, n, error, _ = _flush_log(client, log)
            sent, left = sent + s, left + n
            if error is not None:
                _log.warning("mlflow: %d record(s) of %s not sent (%s); they stay in %s",
                             n, log.run_id, _describe(error), path)
                if _is_transient(error):
                    stopped = error
    return sent, left


class TrialLogger:
    """Logs one trial's per-epoch metrics (step = our epoch, stable across restarts) and its end.

    A briefly unreachable tracking server does not fail the trial: each call tries once with a
    short timeout (`timeout_s`, one quick retry), and what it cannot send is kept in
    `<pending_dir>/<run_id>.jsonl` (default: `default_pending_dir()`); every later call first
    re-sends those records in order (after a failure, `log_epoch` tries again only once
    `retry_every_s` have passed, so a server that hangs does not stall every epoch).
    `finish`/`fail` keep trying until `finish_wait_s` after the outage began (a blip ends
    within seconds; a longer outage is not waited for at every trial's end); what is still unsent then stays in
    the file (a warning names it and the count) for `flush_pending`. A request the server
    rejects (4xx) raises as before.

    A trial that started while the server was down has no run id yet (`run_id=None`, `ref`
    given): its records wait in `<pending_dir>/trial-<study>-<trial>.jsonl` behind an `open`
    record, and the run is found or created (by its tags) as soon as the server answers.
    """

    def __init__(self, tracking_uri: str, run_id: str | None, pending_dir: Path | str | None = None,
                 *, ref: TrialRunRef | None = None, timeout_s: int = 5, finish_wait_s: float = 10.0,
                 retry_every_s: float = 10.0):
        if run_id is None and ref is None:
            raise ValueError("TrialLogger needs a run id, or the TrialRunRef that finds the run")
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.ref = ref
        self.directory = Path(pending_dir) if pending_dir is not None else default_pending_dir()
        self.pending = PendingLog(self.directory, run_id or ref.key)
        if run_id is None and ref.key and not self.pending.records():
            self.pending.append({"id": uuid.uuid4().hex, "type": "open", "ref": ref.__dict__})
        self.timeout_s = timeout_s
        self.finish_wait_s = finish_wait_s
        self.retry_every_s = retry_every_s
        self._buffering = False
        self._down_since = 0.0  # time.monotonic() when the current outage began
        self._next_try = 0.0  # time.monotonic() before which log_epoch only appends

    def log_epoch(self, metrics: dict, if_missing: str | None = None) -> None:
        """One epoch's metrics; `if_missing` (a metric key): only if the run lacks this step of
        it, for an epoch that may have been logged while the server could not be asked."""
        values = {k: float(v) for k, v in metrics.items()
                  if k != "epoch" and isinstance(v, (int, float))}
        record = {"type": "metrics", "step": int(metrics["epoch"]),
                  "timestamp": int(time.time() * 1000), "metrics": values}
        if if_missing:
            record["if_missing"] = if_missing
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

    def log_artifacts(self, local: Path, artifact_path: str, kept: Path | None = None) -> None:
        """Files as the run's artifacts; never a failed trial. When they cannot be sent now and
        a lasting copy of them exists on this machine (`kept`: the study's storage, when it is a
        directory), a record naming it waits with the others; else a warning (the storage
        holds them)."""
        try:
            if self._flush() is not None or self.run_id is None:
                raise ConnectionError("the tracking server cannot be reached")
            with _quick_http(self.tracking_uri, max(self.timeout_s, 60)):
                self.client.log_artifacts(self.run_id, str(local), artifact_path)
        except Exception as e:  # noqa: BLE001 - artifacts are a copy; the storage holds them
            if kept is not None and _is_transient(e):
                self.pending.append({"id": uuid.uuid4().hex, "type": "artifacts", "dir": str(kept),
                                     "artifact_path": artifact_path})
                return
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
        included), or None when that is unknown: the server cannot be asked now (short timeout,
        as above). None is not "no steps": the caller must not re-send on it."""
        pending = {int(r["step"]) for r in self.pending.records()
                   if r["type"] == "metrics" and key in r["metrics"] and not r.get("if_missing")}
        try:
            if self._flush() is not None or self.run_id is None:
                return None
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
        if error is None and self.run_id is not None:
            try:
                with _quick_http(self.tracking_uri, self.timeout_s):
                    _send(self.client, self.run_id, record, {})
                return
            except Exception as e:
                if not _is_transient(e):
                    raise
                error = e
        error = error or ConnectionError("the trial's run is not open yet")
        self.pending.append(record)
        if not _is_transient(error):
            raise error  # a pending record was rejected (e.g. the run was deleted)
        self._next_try = time.monotonic() + self.retry_every_s
        if not self._buffering:
            self._buffering, self._down_since = True, time.monotonic()
            _log.warning("mlflow: cannot log to run %s now (%s); keeping its records in %s and "
                         "training on", self.run_id or self.pending.run_id, _describe(error),
                         self.pending.path)
        # a blip may end within `wait_s`; an outage that has lasted that long already will not
        deadline = self._down_since + wait_s
        while error is not None and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            error = self._flush()
        if error is not None and record["type"] == "end":
            _log.warning("mlflow: %d record(s) of run %s could not be sent (%s); they stay in %s "
                         "(sent by `pitfalls resume`, or pitfalls.sweep.tracking.flush_pending)",
                         len(self.pending), self.run_id or self.pending.run_id, _describe(error),
                         self.pending.path)

    def _flush(self) -> Exception | None:
        """Send this run's pending records, oldest first; the failure that stopped it, if any.
        Once a trial's run is found or created and its file is empty, records go to the run's."""
        if not self.pending.path.exists():
            if self.run_id is None:  # nothing waits, but the run must be found before sending
                try:
                    with _quick_http(self.tracking_uri, self.timeout_s):
                        self.run_id, _ = _find_or_create(self.client, self.ref)
                except Exception as e:  # noqa: BLE001 - the caller judges it
                    return e
                self.pending = PendingLog(self.directory, self.run_id)
            return None
        with _quick_http(self.tracking_uri, self.timeout_s):
            sent, left, error, run_id = _flush_log(self.client, self.pending, self.run_id)
        self.run_id = self.run_id or run_id
        if not left and self.run_id is not None and self.pending.run_id != self.run_id:
            self.pending = PendingLog(self.directory, self.run_id)
        if not left and self._buffering:
            self._buffering, self._next_try = False, 0.0
            _log.warning("mlflow: run %s reachable again; sent %d buffered record(s)",
                         self.run_id, sent)
        return error

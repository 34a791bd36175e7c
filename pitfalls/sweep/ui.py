"""`pitfalls ui STUDY`: the study's runs in the MLflow UI, with its trials preselected for comparison.

A study whose tracking URI is a local store (the default sqlite file `mlflow.db` in the study
directory, a file store, or a database URL) gets a `mlflow server` child process on 127.0.0.1
until Ctrl-C; a study tracked by an http(s) server gets the links into that server, nothing is
started. The links open the experiment's runs table (MLflow 3 otherwise opens its GenAI overview
for a fresh browser) and MLflow's compare-runs view with exactly the study's trial runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TextIO

import yaml

STATE_FILE = "state.json"  # = pitfalls.sweep.driver.STATE_FILE; not imported: the driver (and
# MLflow, through tracking) take seconds to import, and a wrong directory should fail at once
ARTIFACTS_DIR = "mlartifacts"
UI_LOG = "logs/mlflow-ui.log"
HEALTH_TIMEOUT_S = 60.0


class UiError(RuntimeError):
    """The study's UI cannot be shown: one message for the user."""


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def study_tracking(study_dir: Path | str) -> tuple[str, str, str | None]:
    """(tracking URI, experiment name, study id) of the study in `study_dir`, from its state.json
    (written by `pitfalls run`) and study.yaml."""
    study_dir = Path(study_dir)
    state_file, study_file = study_dir / STATE_FILE, study_dir / "study.yaml"
    if not state_file.is_file() or not study_file.is_file():
        raise UiError(f"{study_dir} holds no study (no study.yaml and {STATE_FILE}); "
                      "start one with `pitfalls run STUDY`")
    try:
        state = json.loads(state_file.read_text())
        name = (state.get("study") or {}).get("name") or (yaml.safe_load(study_file.read_text()) or {}).get("name")
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as e:
        raise UiError(f"{study_dir}: cannot read the study's files: {e}") from None
    uri = state.get("tracking_uri")
    if not uri or not name:
        raise UiError(f"{state_file} names no MLflow tracking URI or study name")
    return uri, name, state.get("study_id")


def _trial_run_ids(client, experiment_id: str, study_id: str | None) -> list[str]:
    from pitfalls.sweep.tracking import ROLE_TAG, STUDY_TAG

    query = f"tags.`{ROLE_TAG}` = 'trial'" + (f" and tags.`{STUDY_TAG}` = '{study_id}'" if study_id else "")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    runs.sort(key=lambda r: (r.info.run_name or "", r.info.start_time or 0))
    return [r.info.run_id for r in runs]


def study_links(tracking_uri: str, base_url: str, experiment_name: str, study_id: str | None = None) -> dict:
    """{"runs": the experiment's runs table, "compare": the compare-runs view of its trial runs}
    in the MLflow UI at `base_url`, read from the store at `tracking_uri`. `study_id` narrows the
    trials to one study's (an experiment on a shared server may hold several with one name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UiError(f"the MLflow store at {tracking_uri} holds no experiment {experiment_name!r}")
    exp_id = experiment.experiment_id
    run_ids = _trial_run_ids(client, exp_id, study_id)
    base = base_url.rstrip("/")

    def as_json(values: list[str]) -> str:  # what the UI's own links hold: JSON.stringify(list)
        return urllib.parse.quote(json.dumps(values, separators=(",", ":")), safe="")

    return {"runs": f"{base}/#/experiments/{exp_id}/runs",
            "compare": f"{base}/#/compare-runs?runs={as_json(run_ids)}&experiments={as_json([exp_id])}"}


def server_links(study_dir: Path | str, timeout_s: float = 5.0) -> dict | None:
    """The study's links when it is tracked by an http(s) server that answers, else None (never
    raises: for the end of `pitfalls run`, where a missing link must not fail the study)."""
    from pitfalls.sweep.tracking import _quick_http, check_reachable

    try:
        uri, name, study_id = study_tracking(study_dir)
        if not is_server(uri) or check_reachable(uri, timeout_s):
            return None
        with _quick_http(uri, int(timeout_s)):
            return study_links(uri, uri, name, study_id)
    except Exception:  # noqa: BLE001 - a link is a convenience
        return None


def _local_store(tracking_uri: str, study_dir: Path) -> tuple[str, str | None]:
    """(the URI to serve, how to pass it: "flag" or "env"); the store must exist. A database URL
    (which may hold a password) goes through the environment, not the command line."""
    if tracking_uri.startswith("sqlite:"):
        path = tracking_uri.split("sqlite:///", 1)[-1] if tracking_uri.startswith("sqlite:///") else ""
        if not path or path.startswith(":memory:") or not Path(path.split("?")[0]).is_file():
            raise UiError(f"the study's MLflow store {tracking_uri} does not exist (was the study "
                          "directory moved? its mlflow.db is recorded by absolute path)")
        return tracking_uri, "flag"
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in ("", "file"):
        path = Path(urllib.parse.urlparse(tracking_uri).path if scheme else tracking_uri)
        if not path.is_dir():
            raise UiError(f"the study's MLflow store {tracking_uri} does not exist")
        return path.resolve().as_uri(), "flag"
    return tracking_uri, "env"  # postgresql://..., mysql://...: mlflow server reads it as is


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _print_links(name: str, where: str, links: dict, out: TextIO) -> None:
    print(f"study {name}: {where}", file=out)
    print(f"runs:    {links['runs']}", file=out)
    print(f"compare: {links['compare']}", file=out, flush=True)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (its own process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the wait like Ctrl-C (only the main thread can install handlers)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _store_error(uri: str, e: Exception) -> str:
    if isinstance(e, UiError):
        return str(e)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return re.sub(r"//[^/@\s]+@", "//***@", f"cannot read the study's MLflow store {uri}: {first}")  # no password


def _start_server(store: str, how: str, study_dir: Path, port: int) -> tuple[subprocess.Popen, Path]:
    """`mlflow server` on 127.0.0.1:`port` for `store`, in its own process group, logging to
    the study's logs/mlflow-ui.log."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: starts faster
    if how == "flag":
        cmd += ["--backend-store-uri", store]
    else:
        env["MLFLOW_BACKEND_STORE_URI"] = store  # not on the command line, where `ps` shows it
    artifacts = study_dir / ARTIFACTS_DIR
    if artifacts.is_dir():  # the study's experiment keeps its artifacts there (file:// URIs)
        root = artifacts.resolve().as_uri()
        cmd += ["--default-artifact-root", root, "--artifacts-destination", root]
    log = study_dir / UI_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    return proc, log


def serve(study_dir: Path | str, port: int | None = None, out: TextIO | None = None) -> int:
    """Show the study in the MLflow UI until Ctrl-C (or SIGTERM); print its runs and compare links.
    0 when done, 2 (one `error:` line on stderr) when there is no study or no store, 1 when the
    server does not start or stops by itself."""
    out = out or sys.stdout
    study_dir = Path(study_dir)
    uri = "?"
    try:
        uri, name, study_id = study_tracking(study_dir)
        if is_server(uri):  # a tracking server: its links, nothing to start
            from pitfalls.sweep.tracking import _quick_http, check_reachable

            if problem := check_reachable(uri):
                raise UiError(f"cannot reach the study's MLflow tracking server at {uri}: {problem}")
            with _quick_http(uri, 10):
                links = study_links(uri, uri, name, study_id)
            _print_links(name, f"MLflow server {uri}", links, out)
            return 0
        store, how = _local_store(uri, study_dir)
    except Exception as e:  # noqa: BLE001 - one line, no traceback
        print(f"error: {_store_error(uri, e)}", file=sys.stderr)
        return 2

    port = port or _free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = _start_server(store, how, study_dir, port)
    try:
        with _sigterm_as_interrupt():
            try:
                links = study_links(uri, base, name, study_id)  # read while the server starts
            except Exception as e:  # noqa: BLE001 - one line, no traceback
                print(f"error: {_store_error(uri, e)}", file=sys.stderr)
                return 2
            started = time.monotonic()
            while not _healthy(base):
                if proc.poll() is not None or time.monotonic() - started > HEALTH_TIMEOUT_S:
                    why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                           else f"did not answer {base}/health within {HEALTH_TIMEOUT_S:.0f} s")
                    print(f"error: the MLflow server for {name} {why} (its log: {log})", file=sys.stderr)
                    if tail := _log_tail(log):
                        print(tail, file=sys.stderr)
                    return 1
                time.sleep(0.25)
            shown = uri if how == "flag" else "the study's database"
            _print_links(name, f"MLflow UI at {base} (store {shown}; Ctrl-C to stop)", links, out)
            while proc.poll() is None:
                time.sleep(0.5)
            print(f"error: the MLflow server for {name} stopped by itself with status "
                  f"{proc.returncode} (its log: {log})", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("stopping the MLflow server", file=out, flush=True)
        return 0
    finally:
        _stop(proc)

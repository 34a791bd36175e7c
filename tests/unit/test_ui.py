"""`pitfalls ui`: links into the MLflow UI for a study, and the server it starts for a local store."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from pitfalls.sweep.tracking import default_tracking_uri, open_study_run, open_trial_run
from pitfalls.sweep.ui import serve, server_links, study_links, study_tracking
from tests.conftest import ROOT, _free_port


def _make_study(study_dir: Path, name: str = "uistudy", tracking_uri: str | None = None) -> dict:
    """A study directory as `pitfalls run` leaves it (state.json, study.yaml, mlflow.db and
    mlartifacts/), its experiment holding a parent run, two trial runs, and runs of no concern:
    another study's trial in the same experiment, and a run without a role."""
    study_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(study_dir)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.create_experiment("another")  # so that the study's experiment id is not the first
    artifacts = (study_dir / "mlartifacts").resolve().as_uri()
    study = open_study_run(uri, name, f"{name}-1234abcd", {"study": name}, artifact_location=artifacts)
    trials = [open_trial_run(study, f"t_0000{i}", f"t_0000{i} norm={norm}", {"norm": norm}).run_id
              for i, norm in enumerate(("batch", "group"))]
    other = open_study_run(uri, name, f"{name}-other", {})
    open_trial_run(other, "t_00000", "t_00000 norm=batch", {"norm": "batch"})
    client.create_run(study.experiment_id, run_name="stray")
    (study_dir / "report.txt").write_text("the comparison")
    client.log_artifact(trials[0], str(study_dir / "report.txt"))
    state = {**study.__dict__, "study": {"name": name}}
    (study_dir / "state.json").write_text(json.dumps(state, indent=2))
    (study_dir / "study.yaml").write_text(yaml.safe_dump({"name": name}))
    return {"uri": uri, "experiment_id": study.experiment_id, "trials": trials,
            "parent": study.parent_run_id, "study_id": study.study_id}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    study_dir = tmp_path_factory.mktemp("ui") / "uistudy"
    return study_dir, _make_study(study_dir)


def _query(fragment: str) -> tuple[str, dict]:
    route, _, query = fragment.partition("?")
    return route, {k: json.loads(v) for k, v in urllib.parse.parse_qsl(query)}


def test_links_open_the_runs_table_and_compare_exactly_the_studys_trials(study):
    study_dir, made = study
    uri, name, study_id = study_tracking(study_dir)
    assert (uri, name, study_id) == (made["uri"], "uistudy", made["study_id"])
    links = study_links(uri, "http://127.0.0.1:5123/", name, study_id)
    exp = made["experiment_id"]
    assert exp != "0" and links["runs"] == f"http://127.0.0.1:5123/#/experiments/{exp}/runs"
    base, _, fragment = links["compare"].partition("#")
    assert base == "http://127.0.0.1:5123/"
    route, params = _query(fragment)
    assert route == "/compare-runs"
    assert params == {"runs": made["trials"], "experiments": [exp]}  # trials only, in trial order
    # URL-encoded JSON, as the UI's own links are parsed (decoded, then JSON.parse)
    query = fragment.partition("?")[2]
    assert "[" not in query and '"' not in query and "," not in query
    assert query == ("runs=%5B%22" + "%22%2C%22".join(made["trials"]) + "%22%5D"
                     f"&experiments=%5B%22{exp}%22%5D")
    # without a study id: every trial run of the experiment (the other study's too)
    _, every = _query(study_links(uri, "http://h", name)["compare"].partition("#")[2])
    assert len(every["runs"]) == 3 and set(made["trials"]) < set(every["runs"])


def test_the_state_file_is_the_drivers():
    from pitfalls.sweep import driver, ui

    assert ui.STATE_FILE == driver.STATE_FILE


def test_a_missing_experiment_is_one_clear_error(study):
    from pitfalls.sweep.ui import UiError

    with pytest.raises(UiError, match="holds no experiment 'nope'"):
        study_links(study[1]["uri"], "http://h", "nope")


def _outcome(study_dir: Path):
    from pitfalls.sweep.driver import StudyOutcome

    return StudyOutcome(study_dir, 2, 0, 0, "| table |", str(study_dir))


def test_run_prints_no_links_for_a_local_store_or_an_unreachable_server(study, tmp_path, capsys):
    from pitfalls.cli import _finish

    assert server_links(study[0]) is None  # sqlite: `pitfalls ui` serves it
    (tmp_path / "state.json").write_text(json.dumps({"tracking_uri": f"http://127.0.0.1:{_free_port()}",
                                                     "study": {"name": "x"}}))
    (tmp_path / "study.yaml").write_text("name: x\n")
    started = time.monotonic()
    assert server_links(tmp_path, timeout_s=2) is None
    assert server_links(tmp_path / "absent") is None
    assert _finish(_outcome(tmp_path)) == 0 and _finish(_outcome(study[0])) == 0
    assert time.monotonic() - started < 20
    out = capsys.readouterr().out
    assert "report:" in out and "mlflow:" not in out and "compare:" not in out


def _ui(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pitfalls.cli", "ui", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, **kw)


def test_ui_refuses_a_directory_without_a_study(tmp_path):
    proc = _ui(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "holds no study" in proc.stderr and not proc.stdout


def test_ui_refuses_a_study_whose_store_is_gone(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"tracking_uri": default_tracking_uri(tmp_path),
                                                     "study": {"name": "gone"}}))
    (tmp_path / "study.yaml").write_text("name: gone\n")
    proc = _ui(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def _read_until(proc: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """stdout up to the line starting with `marker` (a reader thread: no blocking past the timeout)."""
    lines, found = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(marker):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    found.wait(timeout_s)
    return "".join(lines)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


@pytest.mark.integration
def test_ui_serves_a_local_study_until_interrupted(study, tmp_path, capsys):
    study_dir, made = study
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pitfalls.cli", "ui", str(study_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out = _read_until(proc, "compare:", 90)
        assert "compare:" in out, out + (proc.stderr.read() if proc.poll() is not None else "")
        links = dict(line.split(maxsplit=1) for line in out.splitlines() if line.startswith(("runs:", "compare:")))
        base = f"http://127.0.0.1:{port}/"
        assert links["runs:"] == f"{base}#/experiments/{made['experiment_id']}/runs"
        assert links["compare:"].startswith(f"{base}#/compare-runs?runs=")
        assert _get(f"{base}health")[0] == 200
        status, page = _get(base)
        assert status == 200 and b"<html" in page.lower()
        # the study's artifacts (file:// under mlartifacts/) are listed through the server
        status, listed = _get(f"{base}ajax-api/2.0/mlflow/artifacts/list?run_id={made['trials'][0]}")
        assert status == 200 and "report.txt" in listed.decode()

        # a study tracked by that server: links against it, nothing started
        remote = tmp_path / "remote"
        remote.mkdir()
        state = json.loads((study_dir / "state.json").read_text())
        (remote / "state.json").write_text(json.dumps({**state, "tracking_uri": base.rstrip("/")}))
        (remote / "study.yaml").write_text((study_dir / "study.yaml").read_text())
        shown = io.StringIO()
        assert serve(remote, None, shown) == 0
        assert f"runs:    {links['runs:']}\ncompare: {links['compare:']}\n" in shown.getvalue()
        assert server_links(remote) == {"runs": links["runs:"], "compare": links["compare:"]}
        # ... and the end of `pitfalls run` for such a study, after its result lines
        from pitfalls.cli import _finish

        capsys.readouterr()
        assert _finish(_outcome(remote)) == 0
        assert capsys.readouterr().out.endswith(f"mlflow:  {links['runs:']}\ncompare: {links['compare:']}\n")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/health")  # the server went with it


def test_serve_stops_on_sigterm_in_process(study, monkeypatch):
    """serve() itself (not through the CLI): a SIGTERM ends it like Ctrl-C, the child stops."""
    import pitfalls.sweep.ui as ui

    started = {}

    class FakeProc:  # stands in for the mlflow server child: healthy at once, never exits
        returncode = None

        def __init__(self, cmd, **kw):
            started["cmd"] = cmd
            started["stopped"] = False

        def poll(self):  # first asked once serving: now the SIGTERM comes (serve's handler is set)
            os.kill(os.getpid(), signal.SIGTERM)
            return None

    monkeypatch.setattr(ui.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(ui, "_healthy", lambda base: True)
    monkeypatch.setattr(ui, "_stop", lambda proc: started.update(stopped=True))
    before = signal.getsignal(signal.SIGTERM)
    out = io.StringIO()
    assert serve(study[0], 5999, out) == 0
    cmd = started["cmd"]
    assert started["stopped"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5999"
    assert cmd[cmd.index("--backend-store-uri") + 1] == study[1]["uri"]
    assert cmd[cmd.index("--default-artifact-root") + 1] == (study[0] / "mlartifacts").resolve().as_uri()
    assert "runs:    http://127.0.0.1:5999/#/experiments/" in out.getvalue()
    assert signal.getsignal(signal.SIGTERM) is before  # serve's handler is gone again

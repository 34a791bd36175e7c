"""Stop a study any way you like, `pitfalls resume`, and every trial ends up exactly once:
the driver is SIGKILLed at several points of a small study, then resumed — in place, or, for a
study on S3-compatible object storage, from a machine that never saw it (an empty working copy).
The grid study's trials are the seeds' baselines (`frame_only`, `two_stage`), so a kill between
a two-stage trial's stages, and its features on a bucket, are resumed too.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pitfalls.cli import main
from tests.conftest import ROOT
from tests.helpers import tiny_study

pytestmark = pytest.mark.integration

# A grid of training mode x norm: frame_only trains EPOCHS epochs, two_stage CNN_EPOCHS + EPOCHS.
EPOCHS, CNN_EPOCHS, TRIALS = 2, 1, 4
TRIAL_EPOCHS = {"frame_only": EPOCHS, "two_stage": CNN_EPOCHS + EPOCHS}
# Lines the driver prints: 2 headers, then per trial 1 start + its epochs' results + 1 done.
LINES = 2 + sum(e + 2 for e in TRIAL_EPOCHS.values()) * TRIALS // len(TRIAL_EPOCHS)
# The line after which the two-stage trials' first stage is done (between the stages)
BETWEEN_STAGES = f"epoch {CNN_EPOCHS}/{CNN_EPOCHS + EPOCHS} (stage 1)"


def _cli(*args):
    return [sys.executable, "-m", "pitfalls.cli", *map(str, args)]


def _pulled(uri: str, cache: Path) -> Path:
    """The study's files as the bucket holds them (pulled into a fresh working copy)."""
    from pitfalls.sweep.storage import existing_study_storage

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PITFALLS_CACHE", str(cache))
        storage = existing_study_storage(uri)
        storage.pull()
        return storage.local


def _completed(study_dir) -> dict[str, float]:
    """What a study directory holds as completed, mid-study too (folded rows and row files)."""
    from pitfalls.results.store import read_study_results

    rows = read_study_results(study_dir).to_pylist()
    return {r["trial_id"]: r["final_val_accuracy"] for r in rows if r["status"] == "completed"}


def _finished_runs(uri: str, experiment: str) -> dict[str, int]:
    """run id -> end time of the experiment's FINISHED trial runs."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'") if exp else []
    return {r.info.run_id: r.info.end_time for r in runs if r.info.status == "FINISHED"}


@pytest.mark.parametrize("seed,storage", [(0, "local"), (1, "s3")])
def test_sigkilled_driver_resumes_every_trial_exactly_once(tmp_path, seed, storage, request,
                                                           ray_session, capsys, monkeypatch):
    """The killed driver is a process of its own (its own Ray, killed with it); `pitfalls
    resume` and `pitfalls report` then run in this process, on the session's Ray. On a disk it
    is killed once the first two-stage trial has finished its first stage (and up to 2 s later:
    between the stages, in the feature extraction or in stage 2), on S3 at a random line."""
    rng = np.random.default_rng(seed)
    kill_after_line = int(rng.integers(3, LINES - 1))  # a random point between start and end
    extra_delay = float(rng.uniform(0, 2))
    study = tmp_path / "study.yaml"
    raw = tiny_study(name="killed", budget={"epochs": EPOCHS, "steps_per_epoch": 6,
                                            "cnn_epochs": CNN_EPOCHS}, seeds=[0])
    raw["search_space"]["factors"]["training"] = list(TRIAL_EPOCHS)
    study.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PITFALLS_CACHE": str(tmp_path / "machine-a")}
    if storage == "s3":  # Tune state, checkpoints and study files in the bucket
        s3 = request.getfixturevalue("s3_server")
        env.update(s3.env)
        location, resume_from = s3.uri(f"{seed}"), s3.uri(f"{seed}/killed")
        extra = ["--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    else:
        location, resume_from, extra = tmp_path / "runs", tmp_path / "runs" / "killed", []

    proc = subprocess.Popen(_cli("run", study, "--storage", location, *extra), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if (BETWEEN_STAGES in line) if storage == "local" else len(seen) >= kill_after_line:
            break
    time.sleep(extra_delay)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and whatever it started, no clean-up
    proc.wait()
    killed_at = time.time()
    mlflow_db = tmp_path / "mlflow.db" if storage == "s3" else Path(resume_from) / "mlflow.db"
    ended = _finished_runs(f"sqlite:///{mlflow_db}", "killed")  # before Tune knew, maybe
    if storage == "s3":  # what the killed driver had uploaded: its working copy stays behind
        assert not (tmp_path / "runs").exists()
        env["PITFALLS_CACHE"] = str(tmp_path / "machine-b")
        done_before = _completed(_pulled(resume_from, tmp_path / "machine-b-peek"))
        study_dir = tmp_path / "machine-b" / "studies" / "s3" / "pitfalls" / f"{seed}" / "killed"
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        study_dir = resume_from
        done_before = _completed(study_dir)
        tracking = f"sqlite:///{study_dir / 'mlflow.db'}"

    for key in ("PITFALLS_CACHE", *(s3.env if storage == "s3" else ())):
        monkeypatch.setenv(key, env[key])
    capsys.readouterr()
    rc = main(["resume", str(resume_from)])
    resumed = capsys.readouterr()
    kill_after_line = len(seen)
    assert storage != "local" or BETWEEN_STAGES in seen[-1], "".join(seen)  # killed there
    context = f"killed after line {kill_after_line}:\n{''.join(seen)}\n{resumed.out[-2000:]}{resumed.err[-3000:]}"
    assert rc == 0, context

    rows = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert len(rows) == TRIALS and len({r["trial_id"] for r in rows}) == TRIALS, context
    assert {r["status"] for r in rows} == {"completed"}
    assert all(len(r["curve_val_accuracy"]) == TRIAL_EPOCHS[r["training"]] for r in rows), context
    assert sorted(r["training"] for r in rows) == sorted(list(TRIAL_EPOCHS) * 2)
    for r in rows:  # frame_only: no temporal head; two_stage: the test split at a stage-2 epoch
        assert r["temporal_head"] == (None if r["training"] == "frame_only" else "lstm")
        assert r["selected_epoch"] > (CNN_EPOCHS if r["training"] == "two_stage" else 0)
    if storage == "local":  # each two-stage trial's features, once per video of every split
        opts = raw["dataset"]["options"]
        for r in rows:
            stored = list((study_dir / "features" / r["trial_id"]).glob("*/*/*.npy"))
            assert len(stored) == (opts["num_videos"] + opts["test_videos"]
                                   if r["training"] == "two_stage" else 0), context
    for tid, final in done_before.items():  # finished before the kill: kept as they were
        assert next(r for r in rows if r["trial_id"] == tid)["final_val_accuracy"] == final

    if storage == "s3":  # the bucket holds the final results too, and the report reads them
        assert _completed(_pulled(resume_from, tmp_path / "peek-after")) == _completed(study_dir)
        monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path / "machine-c"))
        assert main(["report", str(resume_from), "--format", "json"]) == 0
        report = capsys.readouterr().out
        assert sum(c["n"] for c in json.loads(report)["combinations"]) == TRIALS
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("killed")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pitfalls.role") == "study"]
    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", context
    assert sorted(c.data.tags["pitfalls.trial_id"] for c in children) == sorted(r["trial_id"] for r in rows)
    for c in children:
        assert c.info.status == "FINISHED", context
        epochs = TRIAL_EPOCHS[c.data.params["training"]]
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), context  # each epoch once
        tested = client.get_metric_history(c.info.run_id, "test_accuracy")  # the test split: once
        assert [m.step for m in tested] == [epochs], context
        if c.data.tags["pitfalls.trial_id"] in done_before:  # not trained again after the kill
            assert all(m.timestamp / 1000 < killed_at for m in history), context
        if c.info.run_id in ended:  # FINISHED before the kill: not reopened, its end unmoved
            assert c.info.end_time == ended[c.info.run_id], context


OPTUNA_TRIALS = 3
# Kill points, in Optuna's storage: a trial asked and none finished; the first trial told
# COMPLETE (Tune has most likely not recorded its end yet); every trial told COMPLETE. Each
# kill hits the driver of the previous kill's resume, so all but the first kill a resume.
OPTUNA_KILLS = [("asked, none finished", 0), ("one finished", 1), ("all finished", OPTUNA_TRIALS)]


def _optuna_states(db: Path) -> dict[int, tuple[str, str | None]]:
    """Optuna trial number -> (state, Tune trial id), read straight from its sqlite storage."""
    import sqlite3

    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            states = dict(con.execute("select trial_id, state from trials"))
            numbers = dict(con.execute("select trial_id, number from trials"))
            attrs = dict(con.execute("select trial_id, value_json from trial_user_attributes "
                                     "where key = 'pitfalls.trial_id'"))
    except sqlite3.Error:
        return {}  # not created yet, or locked for a moment
    return {numbers[t]: (s, json.loads(attrs[t]) if t in attrs else None) for t, s in states.items()}


def _kill_when(cmd: list[str], env: dict, db: Path, complete: int, log: Path,
               timeout_s: float = 300) -> dict:
    """Run a driver; SIGKILL its process group once Optuna's storage holds `complete` COMPLETE
    trials and (for 0) one RUNNING; return the storage's states at the kill."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            states = _optuna_states(db)
            done = sum(s == "COMPLETE" for s, _ in states.values())
            if done >= complete and (complete or any(s == "RUNNING" for s, _ in states.values())):
                os.killpg(proc.pid, signal.SIGKILL)
                return states
            assert proc.poll() is None, f"the driver ended before the kill point ({states}):\n{log.read_text()[-4000:]}"
            time.sleep(0.05)
        raise AssertionError(f"kill point not reached in {timeout_s} s: {_optuna_states(db)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_optuna_study_killed_again_and_again_resumes_to_exactly_its_trials(tmp_path, ray_session,
                                                                           capsys):
    """Optuna's storage runs ahead of Tune's state: a kill right after a `tell` left a COMPLETE
    trial that Tune restarts (whose reports used to end the resume with UpdateFinishedTrialError),
    a kill right after an `ask` a trial Tune never ran. Three kills (two of them of a resume),
    then a last resume: the study ends with its trials exactly once everywhere."""
    study = tmp_path / "study.yaml"
    raw = tiny_study(name="okill", budget={"epochs": 2, "steps_per_epoch": 4},
                     searcher={"type": "optuna", "sampler": "tpe", "num_samples": OPTUNA_TRIALS, "seed": 0})
    study.write_text(yaml.safe_dump(raw))
    study_dir = tmp_path / "runs" / "okill"
    db = study_dir / "optuna.db"
    env = {**os.environ, "PITFALLS_CACHE": str(tmp_path / "cache")}
    finished_at: dict[str, float] = {}  # Tune trial id -> when a kill found it COMPLETE in Optuna
    for i, (_, complete) in enumerate(OPTUNA_KILLS):
        cmd = _cli("run", study, "--storage", tmp_path / "runs") if i == 0 else _cli("resume", study_dir)
        states = _kill_when(cmd, env, db, complete, tmp_path / f"driver-{i}.log")
        now = time.time()
        for state, tid in states.values():
            if state == "COMPLETE" and tid:
                finished_at.setdefault(tid, now)

    capsys.readouterr()
    rc = main(["resume", str(study_dir)])
    resumed = capsys.readouterr()
    context = f"{_optuna_states(db)}\n{resumed.out[-3000:]}{resumed.err[-3000:]}"
    assert rc == 0, context

    rows = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert len(rows) == OPTUNA_TRIALS and {r["status"] for r in rows} == {"completed"}, context
    states = _optuna_states(db)
    complete = [tid for s, tid in states.values() if s == "COMPLETE"]
    assert sorted(complete) == sorted(r["trial_id"] for r in rows), context  # each told once
    assert not [s for s, _ in states.values() if s == "RUNNING"], context
    state = json.loads((study_dir / "state.json").read_text())
    import optuna  # the study is the study's id in Optuna's storage, not its reusable name

    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == [state["study_id"]]

    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("okill").experiment_id])
    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    assert sorted(c.data.tags["pitfalls.trial_id"] for c in children) == sorted(complete), context
    assert len({c.data.params["lr"] for c in children}) == OPTUNA_TRIALS  # sampled, not fixed
    for c in children:
        assert c.info.status == "FINISHED", context
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2], context  # each epoch once
        if (tid := c.data.tags["pitfalls.trial_id"]) in finished_at:  # not trained again
            assert all(m.timestamp / 1000 < finished_at[tid] for m in history), context
            assert c.info.end_time / 1000 < finished_at[tid], context  # nor its run reopened


def test_a_second_driver_is_refused_and_sigterm_stops_the_first_like_ctrl_c(tmp_path, ray_session,
                                                                              capsys):
    """What a scheduler does (`kubectl delete`, `scancel`): SIGTERM to the driver (this process,
    whose main thread runs the study). Before it, a second `pitfalls resume` of the running study
    is refused, naming the running driver."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(tiny_study(name="term", budget={"epochs": 5, "steps_per_epoch": 4})))
    study_dir = tmp_path / "runs" / "term"
    second: dict = {}

    def second_driver_then_sigterm() -> None:
        deadline = time.monotonic() + 240
        history = study_dir / "history.jsonl"
        while time.monotonic() < deadline:
            if history.exists() and '"epoch": 1' in history.read_text():
                break
            time.sleep(0.1)
        from pitfalls.sweep.driver import StudySetupError, resume_study

        try:
            resume_study(study_dir)
        except StudySetupError as e:
            second["refused"] = str(e)
        os.kill(os.getpid(), signal.SIGTERM)  # to the driver, as a container runtime sends it

    watcher = threading.Thread(target=second_driver_then_sigterm, daemon=True)
    watcher.start()
    capsys.readouterr()
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["run", str(study), "--storage", str(tmp_path / "runs")])
    watcher.join(timeout=30)
    stopped = capsys.readouterr()
    assert rc == 1, stopped  # stopped, resumable: not crashed, not reported as done
    assert "continue with `pitfalls resume" in stopped.err and "Traceback" not in stopped.err, stopped
    assert second["refused"].startswith(f"{study_dir} is being run by another driver (host "
                                        f"{socket.gethostname()}, pid {os.getpid()}, since "), second
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("term").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("pitfalls.role") == "study")
    assert parent.info.status == "KILLED" and int(parent.data.tags["pitfalls.unfinished"]) >= 1
    assert {r.info.status for r in runs if r.data.tags.get("pitfalls.role") == "trial"} <= {"KILLED", "FINISHED"}
    assert signal.getsignal(signal.SIGTERM) is before  # the driver's handler is gone with it

    assert main(["resume", str(study_dir)]) == 0, capsys.readouterr()
    rows = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    runs = client.search_runs([client.get_experiment_by_name("term").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3
    for r in runs:
        if r.data.tags.get("pitfalls.role") == "trial":
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
            assert sorted(steps) == list(range(1, 6)), steps


"""Stop a study any way you like, `pitfalls resume`, and every trial ends up exactly once:
the driver is SIGKILLed at several points of a small study, then resumed — in place, or, for a
study on S3-compatible object storage, from a machine that never saw it (an empty working copy).
"""

import json
import os
import signal
import subprocess
import sys
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

EPOCHS, TRIALS = 3, 4
# Lines the driver prints: 2 headers, then per trial 1 start + EPOCHS results + 1 done.
LINES = 2 + TRIALS * (EPOCHS + 2)


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
    path = study_dir / "results.parquet"
    if not path.exists():
        return {}
    rows = pq.read_table(path).to_pylist()
    return {r["trial_id"]: r["final_val_accuracy"] for r in rows if r["status"] == "completed"}


@pytest.mark.parametrize("seed,storage", [(0, "local"), (5, "local"), (1, "s3")])
def test_sigkilled_driver_resumes_every_trial_exactly_once(tmp_path, seed, storage, request,
                                                           ray_session, capsys, monkeypatch):
    """The killed driver is a process of its own (its own Ray, killed with it); `pitfalls
    resume` and `pitfalls report` then run in this process, on the session's Ray."""
    rng = np.random.default_rng(seed)
    kill_after_line = int(rng.integers(3, LINES - 1))  # a random point between start and end
    extra_delay = float(rng.uniform(0, 2))
    study = tmp_path / "study.yaml"
    raw = tiny_study(name="killed", budget={"epochs": EPOCHS, "steps_per_epoch": 8}, seeds=[0, 1])
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
        if len(seen) >= kill_after_line:
            break
    time.sleep(extra_delay)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and whatever it started, no clean-up
    proc.wait()
    killed_at = time.time()
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
    context = f"killed after line {kill_after_line}:\n{''.join(seen)}\n{resumed.out[-2000:]}{resumed.err[-3000:]}"
    assert rc == 0, context

    rows = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert len(rows) == TRIALS and len({r["trial_id"] for r in rows}) == TRIALS, context
    assert {r["status"] for r in rows} == {"completed"}
    assert all(len(r["curve_val_accuracy"]) == EPOCHS for r in rows), context
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
        history = client.get_metric_history(c.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), context  # each epoch once
        tested = client.get_metric_history(c.info.run_id, "test_accuracy")  # the test split: once
        assert [m.step for m in tested] == [EPOCHS], context
        if c.data.tags["pitfalls.trial_id"] in done_before:  # not trained again after the kill
            assert all(m.timestamp / 1000 < killed_at for m in history), context

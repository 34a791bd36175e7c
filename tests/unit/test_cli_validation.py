"""A bad study fails before any Ray or MLflow work: one message, nothing written."""

import subprocess
import sys

import pytest
import yaml

from tests.helpers import tiny_study


def test_bad_study_fails_with_one_message_and_writes_nothing(tmp_path):
    raw = tiny_study()
    raw["search_space"]["factors"].update(
        {"norm": ["weird"], "frozen_stages": [7], "seq_len": [999]})
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "pitfalls.cli", "run", str(study), "--storage", str(storage)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr
    assert err.count("error:") == 1
    for field in ("factors.norm[0]: 'weird'", "factors.frozen_stages[0]: 7",
                  "factors.seq_len[0]: 999"):
        assert field in err, err
    assert not storage.exists()  # no study dir, no MLflow store, no Ray session dir
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["my study", "..", ".", "../escape", "a/b", "/abs", ".hidden", ""])
def test_bad_name_override_is_refused(tmp_path, capsys, name):
    """A study's name becomes a directory under --storage: nothing may lead out of it."""
    from pitfalls.cli import main
    from tests.conftest import ROOT

    rc = main(["run", str(ROOT / "studies" / "quickstart.yaml"), "--storage", str(tmp_path / "runs"),
               "--name", name])
    err = capsys.readouterr().err
    assert rc == 2 and f"--name: {name!r}" in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())  # nothing written, not even next to the storage


def test_unreachable_mlflow_server_fails_fast_and_writes_nothing(tmp_path):
    from tests.conftest import ROOT, _free_port

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "pitfalls.cli", "run", str(ROOT / "studies" / "quickstart.yaml"),
         "--storage", str(tmp_path / "runs"), "--mlflow-uri", uri],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"cannot reach the MLflow tracking server at {uri}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_resources_this_machine_cannot_give_fail_before_anything_starts(tmp_path):
    """A GPU trial on a CPU-only machine would wait in Tune forever; it is refused up front."""
    import os

    import torch

    raw = tiny_study()
    if torch.cuda.is_available():
        raw["resources"] = {"workers": 1, "cpus_per_worker": (os.cpu_count() or 1) + 1}
        needle = "CPU"
    else:
        raw["resources"] = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1}
        needle = "needs 1 GPU"
    study = tmp_path / "gpu.yaml"
    study.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "pitfalls.cli", "run", str(study), "--storage", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()

"""The file system Ray writes a study's state through: files appear only once complete, so a
killed driver never leaves a truncated experiment state that would make Tune start over."""

import json
import pickle
import subprocess
import sys

import pyarrow.fs as pafs
import pytest
import yaml

from pitfalls.config import parse_study
from pitfalls.sweep.driver import StudySetupError, resume_study, run_study
from pitfalls.sweep.storage import (
    StorageError,
    atomic_local_fs,
    existing_study_storage,
    study_storage,
    tune_state_problem,
)
from tests.helpers import tiny_study


def test_a_file_appears_only_when_closed(tmp_path):
    fs, target = atomic_local_fs(), tmp_path / "sub" / "state.json"
    target.parent.mkdir()
    target.write_text("old")
    with fs.open_output_stream(str(target)) as f:
        f.write(b"new and longer")
        assert target.read_text() == "old"  # readers still see the previous version
    assert target.read_text() == "new and longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]  # no temporary left


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "experiment_state.json"
    target.write_text('{"trials": 4}')
    code = f"""
import os
from pitfalls.sweep.storage import atomic_local_fs
f = atomic_local_fs().open_output_stream({str(target)!r})
f.write(b'{{"tria')
f.flush()
os._exit(9)  # no close: what SIGKILL leaves
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert json.loads(target.read_text()) == {"trials": 4}


def test_ray_can_ship_and_copy_into_it(tmp_path):
    src = tmp_path / "src"
    (src / "checkpoint_000001").mkdir(parents=True)
    (src / "checkpoint_000001" / "state.pt").write_bytes(b"x" * 5_000_000)
    (src / "result.json").write_text("{}")
    fs = pickle.loads(pickle.dumps(atomic_local_fs()))  # Ray pickles it to its workers
    assert fs == atomic_local_fs()
    pafs.copy_files(str(src), str(tmp_path / "dst"), destination_filesystem=fs)
    assert (tmp_path / "dst" / "checkpoint_000001" / "state.pt").read_bytes() == b"x" * 5_000_000
    fs.copy_file(str(src / "result.json"), str(tmp_path / "copy.json"))
    assert (tmp_path / "copy.json").read_text() == "{}"
    infos = fs.get_file_info(pafs.FileSelector(str(tmp_path / "dst"), recursive=True))
    assert len(infos) == 3


def _tune_dir(tmp_path, *, state='{"trial_data": []}', searcher=pickle.dumps({"uuid": "ab"})):
    tune = tmp_path / "tune"
    tune.mkdir()
    (tune / "tuner.pkl").write_bytes(b"")
    if state is not None:
        (tune / "experiment_state-2026-11-22_04-44-13.json").write_text(state)
    if searcher is not None:
        (tune / "basic-variant-state-2026-11-22_04-44-13.json").write_bytes(searcher)
    return tune


def _problem(tune, trials_recorded=True):
    return tune_state_problem(atomic_local_fs(), str(tune), trials_recorded)


def test_restorable_state_passes(tmp_path):
    assert _problem(_tune_dir(tmp_path)) is None


def test_truncated_experiment_state_is_a_problem(tmp_path):
    problem = _problem(_tune_dir(tmp_path, state='{"trial_da'))
    assert "experiment_state-2026-11-22_04-44-13.json is unreadable" in problem


def test_truncated_searcher_state_is_a_problem(tmp_path):
    tune = _tune_dir(tmp_path, searcher=pickle.dumps({"uuid": "ab"})[:7])
    assert "basic-variant-state-2026-11-22_04-44-13.json is unreadable" in _problem(tune)


def test_missing_state_matters_only_once_trials_reported(tmp_path):
    tune = _tune_dir(tmp_path, state=None, searcher=None)
    assert _problem(tune, trials_recorded=False) is None
    assert "holds no experiment state" in _problem(tune)
    (tune / "tuner.pkl").unlink()  # killed before Tune started: nothing to restore
    assert _problem(tune) is None


def test_resume_refuses_state_tune_would_discard(tmp_path):
    """Tune logs 'Restarting experiment' and runs every trial again: refused before Ray starts."""
    raw = tiny_study(name="broken")
    study_dir = tmp_path / "broken"
    study_dir.mkdir()
    (study_dir / "study.yaml").write_text(yaml.safe_dump(raw))
    (study_dir / "state.json").write_text(json.dumps({"study": raw, "study_id": "x",
                                                      "tracking_uri": "sqlite:///unused.db"}))
    (study_dir / "history.jsonl").write_text('{"event": "result"}\n')
    _tune_dir(study_dir, state='{"trial_data": [{"trial')
    with pytest.raises(StudySetupError, match="experiment_state-.* is unreadable.*cannot restore"):
        resume_study(study_dir)


# --- object storage (moto's S3 server) ---

def test_study_files_round_trip_through_the_bucket(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path / "machine-a"))
    storage = study_storage(s3_server.uri("studies"), "demo")
    assert storage.remote and storage.root == "pitfalls/studies/demo"
    assert storage.location == s3_server.uri("studies/demo")  # what `pitfalls resume` takes
    storage.local.mkdir(parents=True)
    (storage.local / "state.json").write_text(json.dumps({"storage": storage.uri}))
    (storage.local / "history.jsonl").write_text("one\ntwo\n")
    storage.push("state.json", "history.jsonl", "results.parquet")  # absent files are skipped
    assert storage.exists("history.jsonl") and not storage.exists("results.parquet")

    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path / "machine-b"))  # another machine
    there = existing_study_storage(storage.uri)
    assert there.root == storage.root and there.local != storage.local
    there.pull()
    assert (there.local / "history.jsonl").read_text() == "one\ntwo\n"
    # its working copy leads back to the bucket through state.json
    assert existing_study_storage(str(there.local)).uri == storage.uri


def test_a_longer_local_history_is_not_overwritten(s3_server, tmp_path, monkeypatch):
    """The driver on this machine was killed before its last upload: its copy is newer."""
    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path))
    storage = study_storage(s3_server.uri("longer"), "demo")
    storage.local.mkdir(parents=True)
    (storage.local / "history.jsonl").write_text("one\n")
    storage.push("history.jsonl")
    (storage.local / "history.jsonl").write_text("one\ntwo\n")
    storage.pull()
    assert (storage.local / "history.jsonl").read_text() == "one\ntwo\n"
    (storage.local / "history.jsonl").write_text("")  # a stale copy: the bucket wins
    storage.pull()
    assert (storage.local / "history.jsonl").read_text() == "one\n"


def test_credentials_in_the_uri_are_refused():
    with pytest.raises(StorageError, match="credentials in the URI.*AWS_ACCESS_KEY_ID"):
        study_storage("s3://KEY:SECRET@bucket/prefix", "demo")


def test_unsupported_schemes_are_refused():
    with pytest.raises(StorageError, match="scheme 'gs' is not supported"):
        study_storage("gs://bucket/prefix", "demo")


def test_the_pickled_storage_holds_no_secret(s3_server):
    storage = study_storage(s3_server.uri("secrets"), "demo")
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"].encode() not in pickle.dumps(storage)


def test_object_storage_needs_a_tracking_server(s3_server, tmp_path, monkeypatch):
    """The default MLflow store would be a sqlite file on this machine: refused up front."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path))
    spec = parse_study(tiny_study(name="remote"))
    with pytest.raises(StudySetupError, match="pass --mlflow-uri"):
        run_study(spec, study_storage(s3_server.uri("needs"), "remote"))
    assert not (tmp_path / "studies").exists()


def test_a_missing_bucket_is_refused_before_anything_starts(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path))
    spec = parse_study(tiny_study(name="nobucket"))
    uri = s3_server.uri("x").replace("s3://pitfalls/", "s3://no-such-bucket/")
    with pytest.raises(StudySetupError, match="bucket 'no-such-bucket' does not exist"):
        run_study(spec, study_storage(uri, "nobucket"), tracking_uri="sqlite:///unused.db")
    assert not (tmp_path / "studies").exists()


def test_a_restored_grid_searcher_releases_trials_that_already_finished(tmp_path):
    """Killed between Tune's searcher and experiment snapshots, the searcher's live set still held
    finished trials, so it handed out no further trial and the resumed study waited forever."""
    import ray.cloudpickle as cloudpickle
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pitfalls.sweep.storage import atomic_local_fs, release_finished_trials

    searcher = BasicVariantGenerator(max_concurrent=2)
    searcher._live_trials = {"t0", "t1"}  # as saved while both ran
    searcher.save_to_dir(str(tmp_path), "2026-11-22_09-00-00")
    fs = atomic_local_fs()
    assert release_finished_trials(fs, str(tmp_path), {"t0", "t9"}) == ["t0"]
    restored = BasicVariantGenerator()
    restored.restore_from_dir(str(tmp_path))
    assert restored._live_trials == {"t1"}
    assert release_finished_trials(fs, str(tmp_path), {"t0"}) == []  # nothing left to release
    state = cloudpickle.loads(next(tmp_path.glob("basic-variant-state-*.json")).read_bytes())
    assert state["_live_trials"] == {"t1"}

"""A study's own files grow by appending: one row file per trial, folded into results.parquet
geometrically; on object storage each history batch and row is an object of its own. Nothing is
lost to a kill at any point, and the bytes recorded per trial do not grow with the study."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

from pitfalls.config import parse_study
from pitfalls.results import store
from pitfalls.results.store import (
    RESULTS_FILE,
    ROWS_DIR,
    compact,
    has_results,
    read_results,
    read_study_results,
    row_files,
    trial_row,
    write_results,
    write_row,
)
from pitfalls.sweep.callbacks import ResultsRecorder
from pitfalls.sweep.storage import HISTORY_FILE, StudyStorage, local_storage, pieces_dir
from tests.conftest import ROOT
from tests.helpers import tiny_study

PARAMS = {"norm": "batch", "frozen_stages": 1, "seq_len": 4, "videos_per_batch": 2, "lr": 1e-3,
          "weight_decay": 1e-4, "seed": 0}


def _row(tid: str, acc: float = 0.5, status: str = "completed") -> dict:
    return trial_row("s", tid, PARAMS, [{"epoch": 1, "val_accuracy": acc}], status=status,
                     error=None, duration_s=1.0, workers=1)


def _finals(study_dir) -> dict[str, float]:
    return {r["trial_id"]: r["final_val_accuracy"] for r in read_study_results(study_dir).to_pylist()}


# --- row files and compaction ---

def test_a_row_survives_a_kill_before_compaction(tmp_path):
    write_results(tmp_path / RESULTS_FILE, [_row("a", 0.1)])
    write_row(tmp_path, _row("b", 0.2))  # ... and the driver is killed here
    assert _finals(tmp_path) == {"a": 0.1, "b": 0.2}
    assert compact(tmp_path) == [f"{ROWS_DIR}/b.json"]
    assert row_files(tmp_path) == [] and read_results(tmp_path / RESULTS_FILE).num_rows == 2


def test_rows_merge_newest_wins(tmp_path):
    write_results(tmp_path / RESULTS_FILE, [_row("a", 0.1, "failed"), _row("b", 0.2)])
    write_row(tmp_path, _row("a", 0.9))  # trial a ran again (resumed after failing)
    table = read_study_results(tmp_path)
    assert table.num_rows == 2 and _finals(tmp_path) == {"a": 0.9, "b": 0.2}
    assert table.schema.metadata == read_results(tmp_path / RESULTS_FILE).schema.metadata
    compact(tmp_path)
    assert {r["trial_id"]: r["status"] for r in read_results(tmp_path / RESULTS_FILE).to_pylist()} \
        == {"a": "completed", "b": "completed"}


def test_a_kill_between_compaction_and_clean_up_loses_and_doubles_nothing(tmp_path, monkeypatch):
    for tid in "abc":
        write_row(tmp_path, _row(tid))
    removed, unlink = [], store.os.unlink

    def killed_after_one(path):
        if removed:
            raise KeyboardInterrupt  # the process dies with two row files left
        removed.append(path)
        unlink(path)

    monkeypatch.setattr(store.os, "unlink", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        compact(tmp_path)
    monkeypatch.undo()
    assert len(row_files(tmp_path)) == 2 and read_results(tmp_path / RESULTS_FILE).num_rows == 3
    assert read_study_results(tmp_path).num_rows == 3
    compact(tmp_path)
    assert row_files(tmp_path) == [] and read_study_results(tmp_path).num_rows == 3


def test_compaction_removes_only_the_rows_it_absorbed(tmp_path, monkeypatch):
    write_row(tmp_path, _row("a", 0.1))
    write_row(tmp_path, _row("b", 0.2))
    original = store.write_results

    def meanwhile(path, rows):  # while results.parquet is written, b is recorded again, c new
        original(path, rows)
        write_row(tmp_path, _row("b", 0.7))
        write_row(tmp_path, _row("c", 0.3))

    monkeypatch.setattr(store, "write_results", meanwhile)
    assert compact(tmp_path) == [f"{ROWS_DIR}/a.json"]
    assert row_files(tmp_path) == [f"{ROWS_DIR}/b.json", f"{ROWS_DIR}/c.json"]
    assert _finals(tmp_path) == {"a": 0.1, "b": 0.7, "c": 0.3}


def test_an_interrupted_row_write_leaves_no_row(tmp_path):
    (tmp_path / ROWS_DIR).mkdir()
    (tmp_path / ROWS_DIR / ".x.json.1234abcd.tmp").write_text('{"trial_id": "x", "sta')
    assert row_files(tmp_path) == [] and not has_results(tmp_path)
    assert read_study_results(tmp_path).num_rows == 0


# --- the recorder ---

@pytest.fixture(scope="module")
def spec():
    return parse_study(tiny_study(), check_data=False)


def _trial(i: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"t{i:03d}", config={**PARAMS, "seed": i}, last_result=None)


def _run_trials(recorder: ResultsRecorder, ids, epochs: int = 2) -> None:
    for i in ids:
        trial = _trial(i)
        recorder.on_trial_start(0, [], trial)
        for e in range(1, epochs + 1):
            recorder.on_trial_result(0, [], trial, {"epoch": e, "val_accuracy": i / 100 + e / 10,
                                                    "config": {"seed": i}})
        recorder.on_trial_complete(0, [], trial)


def test_the_recorder_folds_rows_geometrically(spec, tmp_path):
    recorder = ResultsRecorder(spec, local_storage(tmp_path))
    recorder.setup()
    folded = []
    for i in range(9):
        _run_trials(recorder, [i])
        folded.append(read_results(tmp_path / RESULTS_FILE).num_rows)
        assert len(row_files(tmp_path)) <= folded[-1]  # results.parquet is never far behind
    assert folded == [1, 2, 2, 4, 4, 4, 4, 8, 8]
    assert read_study_results(tmp_path).num_rows == 9
    recorder.compact()  # the driver's, at the end
    assert row_files(tmp_path) == [] and read_results(tmp_path / RESULTS_FILE).num_rows == 9


def test_a_resumed_recorder_sees_every_row_and_sums_only_a_trials_own_sessions(spec, tmp_path):
    recorder = ResultsRecorder(spec, local_storage(tmp_path))
    recorder.setup()
    _run_trials(recorder, range(3))
    trial = _trial(7)
    recorder.on_trial_start(0, [], trial)  # then the driver is killed
    events = [json.loads(line) for line in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    first = [e["time"] for e in events if e["trial_id"] == "t007"]

    again = ResultsRecorder(spec, local_storage(tmp_path))
    again.setup()  # a new session
    assert set(again.rows) == {"t000", "t001", "t002"} and again.compacted + len(again.pending) >= 3
    again.on_trial_start(0, [], trial)
    again.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.4})
    again.on_trial_complete(0, [], trial)
    events = [json.loads(line) for line in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    second = [e["time"] for e in events if e["trial_id"] == "t007"][len(first):]
    row = again.rows["t007"]
    assert row["duration_s"] == pytest.approx(second[-1] - second[0])  # not the kill's gap
    assert set(_finals(tmp_path)) == {"t000", "t001", "t002", "t007"}


# --- object storage: a local directory behind pyarrow, presented as a bucket ---

def _bucket(tmp_path, machine: str) -> StudyStorage:
    (tmp_path / "bucket").mkdir(exist_ok=True)
    fs = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    return StudyStorage(tmp_path / machine, fs, "study", uri="s3://fake/study")


def _objects(tmp_path, directory: str) -> list[str]:
    folder = tmp_path / "bucket" / "study" / directory
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_only_new_events_and_rows_are_uploaded_and_pull_rebuilds_them(spec, tmp_path):
    storage = _bucket(tmp_path, "machine-a")
    storage.local.mkdir(parents=True)
    recorder = ResultsRecorder(spec, storage)
    recorder.setup()
    _run_trials(recorder, range(3), epochs=2)
    lines = (storage.local / HISTORY_FILE).read_bytes().splitlines(keepends=True)
    pieces = _objects(tmp_path, pieces_dir(HISTORY_FILE))
    assert len(pieces) == len(lines) == 3 * 4  # one object per event, no whole history
    assert not (tmp_path / "bucket" / "study" / HISTORY_FILE).exists()
    piece_sizes = sorted((tmp_path / "bucket" / "study" / "history.d" / p).stat().st_size
                         for p in pieces)
    assert piece_sizes == sorted(len(line) for line in lines)
    assert _objects(tmp_path, ROWS_DIR) == ["t002.json"]  # t000, t001 folded (and removed)

    there = _bucket(tmp_path, "machine-b")
    there.pull()
    assert (there.local / HISTORY_FILE).read_bytes() == (storage.local / HISTORY_FILE).read_bytes()
    assert _finals(there.local) == _finals(storage.local) and len(_finals(there.local)) == 3
    assert row_files(there.local) == [f"{ROWS_DIR}/t002.json"]


def test_a_newer_working_copy_is_kept_and_uploads_what_the_bucket_lacks(spec, tmp_path, monkeypatch):
    storage = _bucket(tmp_path, "machine-a")
    storage.local.mkdir(parents=True)
    recorder = ResultsRecorder(spec, storage)
    recorder.setup()
    _run_trials(recorder, range(3))

    def unreachable(*args):
        raise OSError("the bucket cannot be reached")

    monkeypatch.setattr(StudyStorage, "_put", unreachable)
    trial = _trial(3)
    for event in (lambda: recorder.on_trial_start(0, [], trial),
                  lambda: recorder.on_trial_result(0, [], trial, {"epoch": 1, "val_accuracy": 0.3}),
                  lambda: recorder.on_trial_complete(0, [], trial)):
        with pytest.raises(OSError):
            event()  # written here, not uploaded; then the driver is killed
    assert row_files(storage.local)[-1] == f"{ROWS_DIR}/t003.json"
    monkeypatch.undo()
    local_history = (storage.local / HISTORY_FILE).read_bytes()

    storage.pull()  # the same machine resumes: its copy extends the bucket's
    assert (storage.local / HISTORY_FILE).read_bytes() == local_history
    assert "t003" in _finals(storage.local)
    ResultsRecorder(spec, storage).setup()  # the resumed driver catches the bucket up

    there = _bucket(tmp_path, "machine-b")
    there.pull()
    assert (there.local / HISTORY_FILE).read_bytes() == local_history
    assert set(_finals(there.local)) == {"t000", "t001", "t002", "t003"}


def test_pull_replaces_a_stale_working_copy(spec, tmp_path):
    storage = _bucket(tmp_path, "machine-a")
    storage.local.mkdir(parents=True)
    recorder = ResultsRecorder(spec, storage)
    recorder.setup()
    _run_trials(recorder, range(2))
    stale = _bucket(tmp_path, "machine-b")
    stale.local.mkdir(parents=True)
    (stale.local / HISTORY_FILE).write_text('{"trial_id": "old"}\n' * 50)  # longer, but another
    write_row(stale.local, _row("t000", 0.99, "failed"))  # an old row the bucket folded since
    stale.pull()
    assert (stale.local / HISTORY_FILE).read_bytes() == (storage.local / HISTORY_FILE).read_bytes()
    assert _finals(stale.local) == _finals(storage.local)


def test_pull_continues_a_whole_history_with_its_pieces(tmp_path):
    """A study whose whole history.jsonl was uploaded (older versions) and then grew by pieces;
    a piece the whole copy already covers (a kill mid-upload) is not repeated."""
    storage = _bucket(tmp_path, "machine-a")
    storage.local.mkdir(parents=True)
    (storage.local / HISTORY_FILE).write_text("one\ntwo\n")
    storage.push(HISTORY_FILE)
    assert storage.pushed_size(HISTORY_FILE) == 8
    storage.push_tail(HISTORY_FILE, 4)  # "two\n" again, as a piece at offset 4
    with (storage.local / HISTORY_FILE).open("a") as f:
        f.write("three\n")
    assert storage.push_tail(HISTORY_FILE, 8) == 14
    there = _bucket(tmp_path, "machine-b")
    there.pull()
    assert (there.local / HISTORY_FILE).read_text() == "one\ntwo\nthree\n"
    assert there.pushed_size(HISTORY_FILE) == 14


# --- the benchmark's core, at small N ---

def _benchmark():
    spec_ = importlib.util.spec_from_file_location("bookkeeping", ROOT / "benchmarks" / "bookkeeping.py")
    module = importlib.util.module_from_spec(spec_)
    sys.modules[spec_.name] = module  # its dataclasses look their module up
    spec_.loader.exec_module(module)
    return module


def test_bytes_uploaded_per_trial_do_not_grow_with_the_study():
    bench = _benchmark()
    small, large = (bench.measure(n, remote=True, epochs=2) for n in (2, 16))
    assert large.bytes_per_trial <= small.bytes_per_trial
    assert large.objects_per_trial <= small.objects_per_trial
    assert bench.measure(2, remote=False, epochs=2).bytes_per_trial == 0


def test_the_same_on_s3(spec, s3_server, tmp_path, monkeypatch):
    """moto's S3: no directories, deletes of folded row objects, listings by prefix."""
    from pitfalls.sweep.storage import existing_study_storage, study_storage

    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path / "machine-a"))
    storage = study_storage(s3_server.uri("bookkeeping"), "demo")
    storage.local.mkdir(parents=True)
    recorder = ResultsRecorder(spec, storage)
    recorder.setup()
    _run_trials(recorder, range(3))
    listed = {f.path.removeprefix(f"{storage.root}/") for f in storage.fs.get_file_info(
        pafs.FileSelector(storage.root, recursive=True)) if f.type == pafs.FileType.File}
    assert listed == {RESULTS_FILE, f"{ROWS_DIR}/t002.json",
                      *(f"{pieces_dir(HISTORY_FILE)}/{n}" for n in _piece_names(storage))}
    monkeypatch.setenv("PITFALLS_CACHE", str(tmp_path / "machine-b"))
    there = existing_study_storage(storage.uri)
    there.pull()
    assert (there.local / HISTORY_FILE).read_bytes() == (storage.local / HISTORY_FILE).read_bytes()
    assert _finals(there.local) == _finals(storage.local) and len(_finals(there.local)) == 3


def _piece_names(storage: StudyStorage) -> list[str]:
    """The names the pieces of the working copy's history must have: one per event line."""
    offsets, at = [], 0
    for line in (storage.local / HISTORY_FILE).read_bytes().splitlines(keepends=True):
        offsets.append(f"{at:012d}.jsonl")
        at += len(line)
    return offsets

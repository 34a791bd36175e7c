"""Real-data studies as a user runs them: `pitfalls data check/pack`, then `pitfalls run` on a
`frames` dataset (carry_hidden swept) and on a packed Cholec80 store (anticipation). The
studies run through the CLI's `main` in this process, on the session's Ray."""

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pitfalls.cli import main
from tests.conftest import ROOT
from tests.datasets import write_cholec80, write_frames_dataset

pytestmark = pytest.mark.integration


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pitfalls.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _run(capsys, *args) -> tuple[int, str, str]:
    """`pitfalls ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([*map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _study(tmp_path, name, dataset, **extra):
    study = {
        "name": name, "dataset": dataset,
        "model": {"backbone": "test_resnet", "temporal_head": {"type": "lstm", "hidden_size": 16}},
        "budget": {"epochs": 2, "steps_per_epoch": 3},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "searcher": {"type": "grid"}, "seeds": [0],
        "search_space": {"factors": {"norm": ["group"], "frozen_stages": [1], "seq_len": [4],
                                     "videos_per_batch": [2]}},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_frames_dataset_study_with_carried_hidden_state(tmp_path, ray_session, capsys):
    data = tmp_path / "data"
    write_frames_dataset(data, {"a": 9, "b": 10, "c": 12, "d": 11, "e": 13}, size=(20, 16))
    study = _study(tmp_path, "frames_carry",
                   {"name": "frames", "options": {"root": str(data), "frame_size": [16, 16],
                                                  "tool_columns": ["tool_a", "tool_b"]}})
    raw = yaml.safe_load(study.read_text())
    raw["search_space"]["factors"]["carry_hidden"] = [False, True]
    study.write_text(yaml.safe_dump(raw))

    rc, out, err = _run(capsys, "run", study, "--storage", tmp_path / "runs")
    assert rc == 0, out[-3000:] + err[-3000:]
    assert "| carry_hidden |" in out
    table = pq.read_table(tmp_path / "runs" / "frames_carry" / "results.parquet")
    assert sorted(table["carry_hidden"].to_pylist()) == [False, True]
    assert set(table["status"].to_pylist()) == {"completed"}
    assert all(0 <= a <= 1 for a in table["final_val_jaccard"].to_pylist())

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'frames_carry' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("frames_carry")
    children = client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'")
    assert sorted(c.data.params["carry_hidden"] for c in children) == ["False", "True"]


def test_cholec80_check_pack_and_anticipation_study_from_the_store(tmp_path, ray_session, capsys):
    data = tmp_path / "cholec80"
    write_cholec80(data, {1: 14, 2: 12, 3: 13, 4: 12, 5: 15}, size=(24, 20))
    proc = _cli("data", "check", "cholec80", data, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [v["id"] for v in report["videos"]] == [f"video{i:02d}" for i in range(1, 6)]
    assert all(sum(v["phases"].values()) == v["frames"] for v in report["videos"])
    assert set(report["videos"][0]["tools"]) == {"Grasper", "Bipolar", "Hook", "Scissors",
                                                  "Clipper", "Irrigator", "SpecimenBag"}

    store = tmp_path / "store"
    proc = _cli("data", "pack", "cholec80", data, store, "--size", "16x16", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (store / "index.parquet").is_file()

    study = _study(tmp_path, "cholec_anticipation", {"name": "cholec80", "options": {
        "store": str(store), "frame_size": [16, 16],
        "split": {"train": [1, 2, 3], "val": [4], "test": [5]}}},
        task={"name": "anticipation", "horizon": 0.1})
    rc, out, err = _run(capsys, "run", study, "--storage", tmp_path / "runs")
    assert rc == 0, out[-3000:] + err[-3000:]
    assert "val_wMAE" in out
    table = pq.read_table(tmp_path / "runs" / "cholec_anticipation" / "results.parquet")
    assert table["status"].to_pylist() == ["completed"]
    wmae = table["final_val_wMAE"].to_pylist()[0]
    assert 0 <= wmae <= 0.1  # minutes, within the horizon
    assert table["final_val_accuracy"].to_pylist() == [None]
    assert 0 <= table["test_wMAE"].to_pylist()[0] <= 0.1  # the test video, once
    trial = table["trial_id"].to_pylist()[0]
    minutes = pq.read_table(tmp_path / "runs" / "cholec_anticipation" / "predictions" / trial / "test"
                            / "anticipation.parquet")
    assert set(minutes["video"].to_pylist()) == {"video05"}
    tools = ("Bipolar", "Scissors", "Clipper", "Irrigator", "SpecimenBag")  # the default five
    assert minutes.column_names == ["video", "frame", *(f"{t}_{k}" for t in tools for k in ("minutes", "true"))]
    assert minutes["frame"].to_pylist()[:3] == [0, 25, 50]  # Cholec80's 25-fps frame numbers


def test_a_broken_dataset_is_refused_before_ray_starts(tmp_path):
    data = tmp_path / "cholec80"
    write_cholec80(data, {1: 6, 2: 6, 3: 6})
    phase = data / "phase_annotations" / "video02-phase.txt"
    lines = phase.read_text().splitlines()
    lines[30] = lines[30].split("\t")[0] + "\tPreperation"  # line 31 of the file
    phase.write_text("\n".join(lines) + "\n")
    (data / "frames" / "03" / "00000003.jpg").unlink()
    study = _study(tmp_path, "broken", {"name": "cholec80", "options": {
        "root": str(data), "frame_size": [16, 16], "split": {"train": [1, 2], "val": [3]}}})
    proc = _cli("run", study, "--storage", tmp_path / "runs", timeout=120)
    assert proc.returncode == 2
    assert "video02-phase.txt:31: unknown phase 'Preperation'" in proc.stderr
    assert "frames/03/00000003.jpg" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cholec80_phase_study_selects_on_val_tests_once_and_its_predictions_score_the_same(
        tmp_path, ray_session, capsys):
    """The papers' protocol end to end: train, select the checkpoint on validation, evaluate the
    test videos once, write Cholec80-format predictions; `pitfalls evaluate` on those files with
    the dataset's own annotations gives the numbers the trial logged."""
    data = tmp_path / "cholec80"
    write_cholec80(data, {1: 14, 2: 12, 3: 13, 4: 12, 5: 15, 6: 13}, size=(24, 20))
    study = _study(tmp_path, "cholec_protocol", {"name": "cholec80", "options": {
        "root": str(data), "frame_size": [16, 16],
        "split": {"train": [1, 2, 3], "val": [4], "test": [5, 6]}}},
        metric={"name": "test_relaxed_accuracy", "mode": "max"},
        evaluation={"select": "best", "protocol": "matlab"})
    rc, out, err = _run(capsys, "run", study, "--storage", tmp_path / "runs")
    assert rc == 0, out[-3000:] + err[-3000:]
    study_dir = tmp_path / "runs" / "cholec_protocol"
    assert "on the test split, at the checkpoint selected on validation" in (study_dir / "comparison.md").read_text()
    row = pq.read_table(study_dir / "results.parquet").to_pylist()[0]
    curve = row["curve_val_relaxed_accuracy"]
    assert row["selected_epoch"] == 1 + int(np.argmax(curve))  # best on val; ties: the earlier
    trial = row["trial_id"]
    pred_dir = study_dir / "predictions" / trial / "test"
    assert sorted(p.name for p in pred_dir.glob("*-phase.txt")) == ["video05-phase.txt", "video06-phase.txt"]
    assert (study_dir / "predictions" / trial / "val" / "video04-phase.txt").is_file()
    first = (pred_dir / "video05-phase.txt").read_text().splitlines()[:3]
    assert first[0] == "Frame\tPhase" and first[1].split("\t")[0] == "0" and first[2].split("\t")[0] == "25"

    rc, scored, err = _run(capsys, "evaluate", "--gt", data / "phase_annotations", "--pred", pred_dir, "--json")
    assert rc == 0, err
    got = json.loads(scored)
    assert got["fps"] == 1.0 and got["videos"] == 2
    for kind in ("relaxed", "strict"):
        for score in ("accuracy", "jaccard", "precision", "recall"):
            for stat, suffix in (("mean", ""), ("std", "_std")):
                logged = row[f"test_{kind}_{score}{suffix}"]
                mine = got[kind][score][stat]
                assert (mine is None and math.isnan(logged)) or mine == pytest.approx(logged, abs=1e-9), (
                    kind, score, stat, mine, logged)

    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cholec_protocol")
    child = client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'")[0]
    history = client.get_metric_history(child.info.run_id, "test_relaxed_accuracy")
    assert len(history) == 1 and history[0].value == pytest.approx(row["test_relaxed_accuracy"])
    assert client.get_metric_history(child.info.run_id, "selected_epoch")[0].value == row["selected_epoch"]
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "predictions/test")]
    assert "predictions/test/video05-phase.txt" in artifacts and "predictions/test/probabilities.parquet" in artifacts

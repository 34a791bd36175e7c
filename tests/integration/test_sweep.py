"""End-to-end sweeps through a real Ray runtime, real MLflow (server and sqlite) and Optuna."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from pitfalls.cli import main
from pitfalls.config import parse_study
from pitfalls.sweep.driver import StudyExistsError, run_study
from tests.helpers import tiny_study

pytestmark = pytest.mark.integration
PARAMS = {"norm", "frozen_stages", "seq_len", "videos_per_batch", "seed", "lr", "weight_decay"}


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pitfalls.role") == "study"]
    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    return client, parents, children


def test_grid_sweep_logs_to_a_real_mlflow_server(ray_session, mlflow_server, tmp_path, capsys):
    spec = parse_study(tiny_study(name="grid-server", evaluation={"probes": True}))
    out = io.StringIO()
    outcome = run_study(spec, tmp_path / "grid-server", tracking_uri=mlflow_server, out=out)
    assert (outcome.completed, outcome.failed) == (2, 0)

    client, parents, children = _runs(mlflow_server, "grid-server")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {c.data.params["norm"] for c in children} == {"batch", "group"}
    # the fast path each trial's device resolved (CPU: fp32 NCHW) is in its params
    assert {(c.data.params["precision"], c.data.params["channels_last"]) for c in children} == {
        ("fp32", "False")}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert set(child.data.params) >= PARAMS
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparison.md", "results.parquet", "study.yaml"} <= artifacts

    table = pq.read_table(tmp_path / "grid-server" / "results.parquet")
    assert table.num_rows == 2 and set(table["status"].to_pylist()) == {"completed"}
    leaks = dict(zip(table["norm"].to_pylist(), table["probe_leak_train"].to_pylist()))
    assert leaks == {"batch": 1.0, "group": 0.0}
    assert {c.data.params["norm"]: c.data.metrics["probe_leak_train"] for c in children} == leaks
    mlflow_final = {c.data.params["norm"]: c.data.metrics["val_accuracy"] for c in children}
    parquet_final = dict(zip(table["norm"].to_pylist(), table["final_val_accuracy"].to_pylist()))
    assert mlflow_final == pytest.approx(parquet_final)

    text = out.getvalue()
    assert text.count("DONE") == 2 and "| norm |" not in text  # progress lines; table is the CLI's
    assert "| batch |" in outcome.table_markdown and "| group |" in outcome.table_markdown

    # `pitfalls report DIR` rebuilds the same table from the study directory alone
    before = (tmp_path / "grid-server" / "comparison.md").read_text()
    (tmp_path / "grid-server" / "comparison.md").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "grid-server")]) == 0, capsys.readouterr().err
    assert (tmp_path / "grid-server" / "comparison.md").read_text() == before

    # the same comparison from the MLflow experiment alone (a study run elsewhere)
    capsys.readouterr()
    assert main(["report", "--mlflow-experiment", "grid-server", "--mlflow-uri", mlflow_server,
                 "--format", "json"]) == 0
    from_mlflow = {c["norm"]: (c["n"], c["mean"]) for c in json.loads(capsys.readouterr().out)["combinations"]}
    assert from_mlflow == {k: (1, pytest.approx(v)) for k, v in parquet_final.items()}

    with pytest.raises(StudyExistsError):
        run_study(spec, tmp_path / "grid-server", tracking_uri=mlflow_server, out=io.StringIO())


def test_failed_trial_is_recorded_as_failed_with_its_error(ray_session, tmp_path):
    bad_weights = tmp_path / "weights.pt"
    bad_weights.write_text("not a checkpoint")
    raw = tiny_study(name="failing", model={"backbone": "test_resnet", "weights": str(bad_weights)})
    raw["search_space"]["factors"]["norm"] = ["group"]
    outcome = run_study(parse_study(raw), tmp_path / "failing", out=io.StringIO())
    assert (outcome.completed, outcome.failed) == (0, 1)
    _, parents, children = _runs(f"sqlite:///{tmp_path / 'failing' / 'mlflow.db'}", "failing")
    assert len(children) == 1 and children[0].info.status == "FAILED"
    assert children[0].data.tags["pitfalls.error"]
    row = pq.read_table(tmp_path / "failing" / "results.parquet").to_pylist()[0]
    assert row["status"] == "failed" and row["error"]
    assert "| group |" in outcome.table_markdown and "| 1 |" in outcome.table_markdown


def test_backbone_and_temporal_head_are_factors_like_norm(ray_session, tmp_path):
    """Model parameters as factors, end to end: every level is validated and trained, recorded
    as MLflow params and result columns, and compared in the report like any factor."""
    raw = tiny_study(name="model-factors", budget={"epochs": 1, "steps_per_epoch": 2},
                     model={"backbone": "test_resnet",
                            "temporal_head": [{"type": "lstm", "hidden_size": 8},
                                              {"type": "gru", "hidden_size": 8}]})
    raw["search_space"]["factors"] = {"backbone": ["test_resnet", "test_efficientnet"],
                                      "temporal_head": ["lstm", "gru"], "norm": ["batch", "group"],
                                      "frozen_stages": [1], "seq_len": [4], "videos_per_batch": [2]}
    spec = parse_study(raw)
    assert spec.num_trials == 8 and spec.search_space.varied_factors[:2] == ["backbone", "temporal_head"]
    study_dir = tmp_path / "model-factors"
    outcome = run_study(spec, study_dir, out=io.StringIO())
    assert (outcome.completed, outcome.failed) == (8, 0)

    _, _, children = _runs(f"sqlite:///{study_dir / 'mlflow.db'}", "model-factors")
    cells = {(c.data.params["backbone"], c.data.params["temporal_head"], c.data.params["norm"])
             for c in children}
    assert len(children) == 8 and len(cells) == 8  # the full grid, each cell once
    rows = pq.read_table(study_dir / "results.parquet").to_pylist()
    assert {(r["backbone"], r["temporal_head"], r["norm"]) for r in rows} == cells
    assert all(r["status"] == "completed" and r["final_val_accuracy"] is not None for r in rows)

    table = (study_dir / "comparison.md").read_text()
    assert "| backbone | temporal_head | norm | n |" in table
    for backbone in ("test_resnet", "test_efficientnet"):
        for head in ("lstm", "gru"):
            assert f"| {backbone} | {head} | batch | 1 |" in table, table
    assert "| backbone | test_efficientnet → test_resnet | 4 |" in table  # paired over the rest
    assert "| temporal_head | gru → lstm | 4 |" in table

"""End-to-end sweeps through a real Ray runtime, real MLflow (server and sqlite) and Optuna."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

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


def test_grid_sweep_logs_to_a_real_mlflow_server(ray_session, mlflow_server, tmp_path):
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
    proc = subprocess.run([sys.executable, "-m", "pitfalls.cli", "report",
                           str(tmp_path / "grid-server")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grid-server" / "comparison.md").read_text() == before

    # the same comparison from the MLflow experiment alone (a study run elsewhere)
    proc = subprocess.run([sys.executable, "-m", "pitfalls.cli", "report", "--mlflow-experiment",
                           "grid-server", "--mlflow-uri", mlflow_server, "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from_mlflow = {c["norm"]: (c["n"], c["mean"]) for c in json.loads(proc.stdout)["combinations"]}
    assert from_mlflow == {k: (1, pytest.approx(v)) for k, v in parquet_final.items()}

    with pytest.raises(StudyExistsError):
        run_study(spec, tmp_path / "grid-server", tracking_uri=mlflow_server, out=io.StringIO())


def test_optuna_sweep_with_default_sqlite_store(ray_session, tmp_path):
    import optuna

    raw = tiny_study(name="optuna-sqlite", searcher={"type": "optuna", "sampler": "tpe",
                                                    "num_samples": 2, "seed": 1})
    outcome = run_study(parse_study(raw), tmp_path / "opt", out=io.StringIO())
    assert (outcome.completed, outcome.failed) == (2, 0)
    _, parents, children = _runs(f"sqlite:///{tmp_path / 'opt' / 'mlflow.db'}", "optuna-sqlite")
    assert len(parents) == 1 and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    study = optuna.load_study(study_name="optuna-sqlite",
                              storage=f"sqlite:///{tmp_path / 'opt' / 'optuna.db'}")
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    lrs = {c.data.params["lr"] for c in children}
    assert len(lrs) == 2  # the nuisance parameter was sampled, not fixed


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


def test_multi_worker_trial_runs_ddp_in_ray_train(ray_session, tmp_path):
    """workers: 2 -> TorchTrainer with two gloo workers; rank 0 alone logs to MLflow."""
    raw = tiny_study(name="ddp", resources={"workers": 2, "cpus_per_worker": 1})
    raw["search_space"]["factors"]["norm"] = ["group"]
    outcome = run_study(parse_study(raw), tmp_path / "ddp", out=io.StringIO())
    assert (outcome.completed, outcome.failed) == (1, 0)
    client, parents, children = _runs(f"sqlite:///{tmp_path / 'ddp' / 'mlflow.db'}", "ddp")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    sizes = client.get_metric_history(children[0].info.run_id, "world_size")
    assert [m.value for m in sizes] == [2.0, 2.0]  # one value per epoch: a single writer
    assert (tmp_path / "ddp" / "train").is_dir()  # the Ray Train run lives in the study dir

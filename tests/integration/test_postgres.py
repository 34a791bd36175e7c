"""A study on PostgreSQL: MLflow's server and Optuna's storage in one real PostgreSQL server.

The database password is in the URLs (the MLflow server's backend store, `--optuna-storage`),
and basic-auth credentials are in the tracking URI (`--mlflow-uri http://user:secret@...`); none
of the study's files (Tune's pickles included), logs, params, tags or output may contain them.
"""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pitfalls.cli import main
from tests.helpers import tiny_study

pytestmark = pytest.mark.integration


def test_optuna_study_on_postgres(mlflow_postgres_server, postgres, tmp_path, ray_session, capsys,
                                  monkeypatch):
    """`pitfalls run` in this process, on the session's Ray."""
    import os

    import optuna

    # the run sets them (pitfalls.sweep.credentials); set first so that they are undone after
    for name in ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")

    raw = tiny_study(name="pg-optuna", searcher={"type": "optuna", "sampler": "random",
                                                 "num_samples": 3, "seed": 0},
                     budget={"epochs": 2, "steps_per_epoch": 2})
    study_file = tmp_path / "pg-optuna.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    optuna_url = postgres.url("optuna")
    # the session's server checks no credentials: what matters is where they go
    tracking_secret = "trk-" + os.urandom(8).hex()
    tracking_uri = mlflow_postgres_server.uri.replace("://", f"://pg-user:{tracking_secret}@", 1)
    capsys.readouterr()
    rc = main(["run", str(study_file), "--storage", str(tmp_path), "--mlflow-uri",
               tracking_uri, "--optuna-storage", optuna_url])
    output = capsys.readouterr()
    assert rc == 0, output.out[-3000:] + output.err[-3000:]
    study_dir = tmp_path / "pg-optuna"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"],
            os.environ["PGPASSWORD"]) == ("pg-user", tracking_secret, postgres.password)
    assert f"mlflow: {mlflow_postgres_server.uri} " in output.out  # the clean URI is shown

    client = MlflowClient(mlflow_postgres_server.uri)
    exp = client.get_experiment_by_name("pg-optuna")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pitfalls.role") == "study"]
    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    for c in children:
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")] == [1, 2]

    # the password reaches neither the study's files nor MLflow's params and tags
    secret = postgres.password
    checked = [study_dir / n for n in ("results.parquet", "study.yaml", "state.json")]
    checked += [p for p in (study_dir / "logs").rglob("*") if p.is_file()]
    for path in checked:
        assert path.is_file(), path
        assert secret.encode() not in path.read_bytes(), f"the database password is in {path}"
    for run in runs:
        for name, values in (("params", run.data.params), ("tags", run.data.tags)):
            leaked = [k for k, v in values.items() if secret in str(v)]
            assert not leaked, f"the database password is in run {run.info.run_id}'s {name}: {leaked}"
    assert secret not in output.out + output.err
    assert secret not in mlflow_postgres_server.log_path.read_text()
    # Ray Tune pickles the OptunaSearch, its storage URL included, into tune/*.pkl, and the
    # trials' context (tracking URI included) into its trial state: both were moved out of the
    # URLs (into the driver's PGPASSWORD and MLFLOW_TRACKING_*), so no file may hold them.
    assert tracking_secret not in output.out + output.err + mlflow_postgres_server.log_path.read_text()
    for leaking in (secret, tracking_secret):
        leaked = sorted(str(p.relative_to(study_dir)) for p in study_dir.rglob("*")
                        if p.is_file() and leaking.encode() in p.read_bytes())
        assert not leaked, leaked
    assert any(study_dir.glob("tune/**/*.pkl")), "Tune's pickles were not checked"
    state = (study_dir / "state.json").read_text()
    assert f'"tracking_uri": "{mlflow_postgres_server.uri}"' in state

    # the Optuna study is named by the study's id (pitfalls.sweep.space.search_algorithm)
    study = optuna.load_study(study_name=json.loads(state)["study_id"], storage=optuna_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert not (study_dir / "optuna.db").exists(), "Optuna wrote its sqlite file despite --optuna-storage"


def test_password_from_pgpassword_not_from_the_url(postgres, monkeypatch, tmp_path):
    """The deployment docs/deployment.md recommends: password-less URLs, the password in
    PGPASSWORD (libpq reads it), so no URL anyone stores or pickles holds it."""
    import pickle

    import optuna

    from pitfalls.config import parse_study
    from pitfalls.sweep.space import search_algorithm

    monkeypatch.setenv("PGPASSWORD", postgres.password)
    url = postgres.url("optuna", with_password=False)
    assert postgres.password not in url
    spec = parse_study(tiny_study(name="pg-env", searcher={"type": "optuna", "sampler": "random",
                                                           "num_samples": 1, "seed": 0}))
    searcher = search_algorithm(spec, tmp_path, url)  # what Tune pickles into tune/*.pkl
    assert postgres.password.encode() not in pickle.dumps(searcher)
    optuna.create_study(study_name="pg-env", storage=url)  # connects with PGPASSWORD
    assert "pg-env" in optuna.get_all_study_names(storage=url)
    assert not (tmp_path / "optuna.db").exists()

    client = MlflowClient(postgres.url("mlflow", with_password=False))  # MLflow's SQL store
    assert client.search_experiments()  # the server's tables, read with the env password

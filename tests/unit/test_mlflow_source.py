"""`pitfalls report --mlflow-experiment`: every run page by page, and one study (by its id) at a
time, against a real sqlite MLflow store."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pitfalls.cli import main
from pitfalls.results import mlflow_source
from pitfalls.results.mlflow_source import results_from_mlflow


def _study(client: MlflowClient, exp: str, study_id: str, trials: int) -> None:
    client.create_run(exp, tags={"pitfalls.role": "study", "pitfalls.study_id": study_id})
    for i in range(trials):
        run = client.create_run(exp, tags={"pitfalls.role": "trial", "pitfalls.study_id": study_id,
                                           "pitfalls.trial_id": f"{study_id}_{i}"})
        rid = run.info.run_id
        client.log_batch(rid, metrics=[Metric("val_accuracy", 0.5 + i / 100, 0, 1)],
                         params=[Param("norm", ("batch", "group")[i % 2]), Param("seed", str(i))])
        client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One experiment holding two studies of the same name (`demo-a`: 5 trials, `demo-b`: 2),
    another holding one."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    two = client.create_experiment("demo")
    _study(client, two, "demo-a", 5)
    _study(client, two, "demo-b", 2)
    _study(client, client.create_experiment("single"), "single-x", 3)
    return uri


def test_every_page_is_read(store, monkeypatch):
    monkeypatch.setattr(mlflow_source, "PAGE_SIZE", 2)
    calls = []
    search = MlflowClient.search_runs

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("page_token"))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", counted)
    table = results_from_mlflow("demo", store, study_id="demo-a")
    assert sorted(table["trial_id"].to_pylist()) == [f"demo-a_{i}" for i in range(5)]
    assert len(calls) == 3 and calls[0] is None and all(calls[1:])  # 2 + 2 + 1 runs
    assert len(results_from_mlflow("single", store)) == 3


def test_an_experiment_with_two_studies_is_refused_with_each_study(store):
    with pytest.raises(ValueError) as e:
        results_from_mlflow("demo", store)
    message = str(e.value)
    assert "holds 2 studies" in message and "--study-id" in message
    assert "demo-a: 5 trial run(s), started 20" in message
    assert "demo-b: 2 trial run(s), started 20" in message
    with pytest.raises(ValueError, match="holds no study 'demo-c'; it holds demo-a: 5 trial"):
        results_from_mlflow("demo", store, study_id="demo-c")


def test_the_cli_names_the_studies_in_one_line_or_reads_the_one_chosen(store, capsys):
    assert main(["report", "--mlflow-experiment", "demo", "--mlflow-uri", store]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow experiment 'demo' holds 2 studies")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["report", "--mlflow-experiment", "demo", "--mlflow-uri", store,
                 "--study-id", "demo-b", "--format", "csv"]) == 0
    out = capsys.readouterr().out  # demo-b's two trials, one per norm
    assert '"batch",1,' in out and '"group",1,' in out
    assert main(["report", "some/dir", "--study-id", "demo-b"]) == 2
    assert "--study-id picks a study of --mlflow-experiment" in capsys.readouterr().err

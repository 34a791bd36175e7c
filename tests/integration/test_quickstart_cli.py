"""The README's first command, as a new user runs it: the shipped quickstart through the CLI."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_quickstart_study_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pitfalls.cli", "run", str(ROOT / "studies" / "quickstart.yaml"),
         "--storage", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| norm | frozen_stages | n |" in proc.stdout
    assert proc.stdout.count("DONE") == 8
    study_dir = tmp_path / "quickstart"
    for name in ("study.yaml", "state.json", "results.parquet", "comparison.md", "mlflow.db"):
        assert (study_dir / name).is_file(), name

    table = pq.read_table(study_dir / "results.parquet")
    assert table.num_rows == 8 and set(table["status"].to_pylist()) == {"completed"}

    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pitfalls.role") == "study"]
    children = [r for r in runs if r.data.tags.get("pitfalls.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["pitfalls.trial_id"] for c in children}) == 8
    combos = {(c.data.params["norm"], c.data.params["frozen_stages"], c.data.params["seed"])
              for c in children}
    assert len(combos) == 8  # the full grid, each cell once
    for c in children:
        assert len(client.get_metric_history(c.info.run_id, "val_accuracy")) == 3

    # nothing of Ray's own logging reaches the terminal
    for noise in ("INFO worker.py", "Started a local Ray instance", "Trial status",
                  "Configuration for experiment", "Creating initial MLflow database", "╭",
                  "View detailed results", "tensorboard"):
        assert noise not in proc.stdout + proc.stderr, noise

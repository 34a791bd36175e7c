"""Results in the schema, rebuilt from a study's MLflow experiment (a study run elsewhere)."""

from __future__ import annotations

import pyarrow as pa

from pitfalls.config import PARAMS, parse_param
from pitfalls.probes.registry import COLUMNS as PROBE_COLUMNS
from pitfalls.results.schema import METRICS, SCHEMA, TEST_METRICS
from pitfalls.results.store import trial_row

STATUS = {"FINISHED": "completed", "FAILED": "failed"}  # RUNNING/KILLED trials are unfinished


def results_from_mlflow(experiment: str, tracking_uri: str | None = None) -> pa.Table:
    """One row per finished or failed trial run (`pitfalls.role = trial`) of `experiment`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], "tags.`pitfalls.role` = 'trial'",
                              max_results=50_000)
    rows = []
    for run in runs:
        status = STATUS.get(run.info.status)
        if status is None:
            continue
        params = {k: parse_param(k, v) for k, v in run.data.params.items() if k in PARAMS}
        steps: dict[int, dict] = {}
        once = (k for k in (*PROBE_COLUMNS, *TEST_METRICS) if k in run.data.metrics)
        for metric in (*METRICS, *once):
            for m in client.get_metric_history(run.info.run_id, metric):
                steps.setdefault(m.step, {"epoch": m.step})[metric] = m.value
        history = [steps[s] for s in sorted(steps)]
        end = run.info.end_time or run.info.start_time
        rows.append(trial_row(experiment, run.data.tags.get("pitfalls.trial_id", run.info.run_id),
                              params, history, status=status,
                              error=run.data.tags.get("pitfalls.error"),
                              duration_s=(end - run.info.start_time) / 1000, workers=None))
    return pa.Table.from_pylist(rows, schema=SCHEMA)

"""Results in the schema, rebuilt from a study's MLflow experiment (a study run elsewhere).

A study is identified by its study id (the `pitfalls.study_id` tag), not by the experiment's
name: running a study of the same name again (another directory, another bucket) adds a second
study to the same experiment, and merging the two would count its trials twice.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pyarrow as pa

from pitfalls.config import PARAMS, parse_param
from pitfalls.probes.registry import COLUMNS as PROBE_COLUMNS
from pitfalls.results.schema import METRICS, SCHEMA, TEST_METRICS
from pitfalls.results.store import trial_row

STATUS = {"FINISHED": "completed", "FAILED": "failed"}  # RUNNING/KILLED trials are unfinished
# The tags pitfalls.sweep.tracking gives its runs (read here, below the sweep layer).
STUDY_TAG, TRIAL_TAG, ROLE_TAG, ERROR_TAG = ("pitfalls.study_id", "pitfalls.trial_id",
                                             "pitfalls.role", "pitfalls.error")
PAGE_SIZE = 1000  # runs per search_runs call; every page is read


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    """Every run matching the filter, page by page (one call would stop at its max_results)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=PAGE_SIZE,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def _started(client, experiment_id: str) -> dict[str, str]:
    """Each study's parent run start time (UTC), by study id."""
    parents = _all_runs(client, experiment_id, f"tags.`{ROLE_TAG}` = 'study'")
    return {r.data.tags.get(STUDY_TAG, ""): datetime.fromtimestamp(
        r.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC") for r in parents}


def _studies_problem(client, experiment: str, experiment_id: str, counts: Counter,
                     study_id: str | None) -> str:
    """The message refusing an ambiguous experiment or an unknown study id."""
    started = _started(client, experiment_id)
    listed = "; ".join(f"{sid or '(no study id)'}: {n} trial run(s)"
                       + (f", started {started[sid]}" if sid in started else "")
                       for sid, n in sorted(counts.items()))
    if study_id is not None:
        return f"MLflow experiment {experiment!r} holds no study {study_id!r}; it holds {listed}"
    return (f"MLflow experiment {experiment!r} holds {len(counts)} studies ({listed}); "
            "choose one with --study-id")


def _trial_runs(client, experiment: str, experiment_id: str, study_id: str | None) -> list:
    """The trial runs of one study of the experiment; refuses when which one is ambiguous."""
    trial_filter = f"tags.`{ROLE_TAG}` = 'trial'"
    if study_id is not None and "'" not in study_id:  # (no quote can be in a filter string)
        runs = _all_runs(client, experiment_id, f"{trial_filter} and tags.`{STUDY_TAG}` = '{study_id}'")
        if runs:
            return runs
    runs = _all_runs(client, experiment_id, trial_filter)
    counts = Counter(r.data.tags.get(STUDY_TAG, "") for r in runs)
    if study_id is None and len(counts) <= 1:
        return runs
    raise ValueError(_studies_problem(client, experiment, experiment_id, counts, study_id))


def _row(client, experiment: str, run) -> dict | None:
    """A finished or failed trial run as a results row (None for an unfinished one)."""
    status = STATUS.get(run.info.status)
    if status is None:
        return None
    params = {k: parse_param(k, v) for k, v in run.data.params.items() if k in PARAMS}
    steps: dict[int, dict] = {}
    once = (k for k in (*PROBE_COLUMNS, *TEST_METRICS) if k in run.data.metrics)
    for metric in (*METRICS, *once):
        for m in client.get_metric_history(run.info.run_id, metric):
            steps.setdefault(m.step, {"epoch": m.step})[metric] = m.value
    history = [steps[s] for s in sorted(steps)]
    end = run.info.end_time or run.info.start_time
    return trial_row(experiment, run.data.tags.get(TRIAL_TAG, run.info.run_id), params, history,
                     status=status, error=run.data.tags.get(ERROR_TAG),
                     duration_s=(end - run.info.start_time) / 1000, workers=None)


def results_from_mlflow(experiment: str, tracking_uri: str | None = None,
                        study_id: str | None = None) -> pa.Table:
    """One row per finished or failed trial run (`pitfalls.role = trial`) of one study of
    `experiment`: the only one it holds, or `study_id`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}")
    runs = _trial_runs(client, experiment, exp.experiment_id, study_id)
    rows = [row for run in runs if (row := _row(client, experiment, run)) is not None]
    return pa.Table.from_pylist(rows, schema=SCHEMA)

"""MLflow tracking with our own run identity: study = parent run, trial = child run.

Runs are found or created by stable tags (`pitfalls.study_id`, `pitfalls.trial_id`) rather than
by Ray's in-memory state, so a retried or resumed trial continues its run instead of creating a
duplicate. Exactly one process writes a trial's run (the trial driver, or rank 0 under DDP).
Uses `MlflowClient` with explicit run ids: no global "active run" state crossing processes.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

STUDY_TAG = "pitfalls.study_id"
TRIAL_TAG = "pitfalls.trial_id"
ROLE_TAG = "pitfalls.role"


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None. Any HTTP answer counts as
    reachable; MLflow's own client would instead retry for minutes before failing."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))
    return None


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class StudyRun:
    """Where a study's runs live; small and picklable, handed to every trial."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study_id: str


def open_study_run(tracking_uri: str, experiment: str, study_id: str, params: dict,
                   artifact_location: str | None = None) -> StudyRun:
    """Find or create the experiment and the study's parent run (tagged with `study_id`)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=artifact_location)
    found = client.search_runs([exp_id], f"tags.`{STUDY_TAG}` = '{study_id}' and "
                                         f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(exp_id, run_name=study_id,
                                tags={STUDY_TAG: study_id, ROLE_TAG: "study"})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return StudyRun(tracking_uri, exp_id, run_id, study_id)


def close_study_run(study: StudyRun, status: str, artifacts: list[Path] = (), tags: dict | None = None) -> None:
    client = MlflowClient(study.tracking_uri)
    for path in artifacts:
        client.log_artifact(study.parent_run_id, str(path))
    for k, v in (tags or {}).items():
        client.set_tag(study.parent_run_id, k, str(v))
    client.set_terminated(study.parent_run_id, status)


def open_trial_run(study: StudyRun, trial_id: str, run_name: str, params: dict) -> str:
    """Find the trial's child run by its tags, or create it with the flat params; return its id."""
    client = MlflowClient(study.tracking_uri)
    found = client.search_runs(
        [study.experiment_id],
        f"tags.`{STUDY_TAG}` = '{study.study_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(study.experiment_id, run_name=run_name, tags={
        "mlflow.parentRunId": study.parent_run_id, STUDY_TAG: study.study_id,
        TRIAL_TAG: trial_id, ROLE_TAG: "trial"})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


class TrialLogger:
    """Logs one trial's per-epoch metrics (step = our epoch, stable across restarts)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def log_epoch(self, metrics: dict) -> None:
        import time

        ts, step = int(time.time() * 1000), int(metrics["epoch"])
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), ts, step) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float))])

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, error: BaseException) -> None:
        """FAILED with the error as a tag; KILLED when the trial was stopped, not broken."""
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.KILLED))
            return
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.client.set_tag(self.run_id, "pitfalls.error", text[:5000])
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FAILED))

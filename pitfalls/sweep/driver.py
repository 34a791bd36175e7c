"""`pitfalls run`: validated StudySpec -> Tune (grid or Optuna) -> trials -> MLflow + Parquet.

The study directory holds everything needed to inspect or rebuild the study:
  study.yaml        the resolved study (search space inlined)
  state.json        the study's identity: study id, MLflow URI, experiment and parent run
  tune/             Tune's experiment state;  train/  Ray Train runs of multi-worker trials
  results.parquet   one row per trial (pitfalls.results.schema), written as trials finish
  comparison.md     the comparison table;  logs/ray.log  Ray's own output
  mlflow.db, mlartifacts/   the default MLflow store;  optuna.db  Optuna's storage
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from pitfalls.config import StudySpec
from pitfalls.results import RESULTS_FILE
from pitfalls.sweep.runtime import quiet_logging
from pitfalls.sweep.tracking import (StudyRun, check_reachable, default_tracking_uri,
                                     open_study_run)

TUNE_DIR = "tune"


class StudySetupError(RuntimeError):
    """The study cannot start (nothing has been written): one message for the user."""


class StudyExistsError(StudySetupError):
    pass


@dataclass(frozen=True)
class StudyOutcome:
    study_dir: Path
    completed: int
    failed: int
    unfinished: int  # interrupted (Ctrl-C) or never started
    table_markdown: str


def resource_problem(spec: StudySpec, capacity: dict[str, float]) -> str | None:
    """Why no trial of `spec` could ever be scheduled on `capacity`, or None (Tune would wait
    for the missing resources forever instead of failing)."""
    r = spec.resources
    need = {"CPU": r.workers * r.cpus_per_worker, "GPU": r.workers * r.gpus_per_worker}
    for kind, amount in need.items():
        if amount > capacity.get(kind, 0):
            return (f"resources: a trial needs {amount:g} {kind} (workers {r.workers} x "
                    f"{kind.lower()}s_per_worker) but the cluster has {capacity.get(kind, 0):g}")
    return None


def local_capacity() -> dict[str, float]:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _max_concurrent(spec: StudySpec, capacity: dict[str, float]) -> int:
    r = spec.resources
    limits = [capacity.get("CPU", 1) // (r.workers * r.cpus_per_worker)]
    if r.gpus_per_worker:
        limits.append(capacity.get("GPU", 0) // (r.workers * r.gpus_per_worker))
    return max(1, int(min(limits)))


def _trial_resources(spec: StudySpec, capacity: dict[str, float]) -> dict[str, float]:
    from pitfalls.sweep.runtime import DRIVER_RESOURCE

    r = spec.resources
    if r.workers == 1:  # the trial process trains: it holds the worker's resources itself
        res = {"CPU": r.cpus_per_worker}
        if r.gpus_per_worker:
            res["GPU"] = r.gpus_per_worker
        return res
    # a driver that only waits on its TorchTrainer: take no CPU away from the workers
    return {DRIVER_RESOURCE: 1} if capacity.get(DRIVER_RESOURCE) else {"CPU": 0.01}


def prepare_study_dir(spec: StudySpec, study_dir: Path, tracking_uri: str | None) -> StudyRun:
    """Create the study directory and its MLflow parent run; refuse an existing study.

    The MLflow server is checked before anything is written, and a directory this call created
    is removed again if the parent run cannot be opened: a failed start leaves nothing behind.
    """
    if (study_dir / "study.yaml").exists():
        raise StudyExistsError(
            f"{study_dir} already holds a study; choose another --name or --storage, "
            f"or delete that directory to start over")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(study_dir)
    problem = check_reachable(uri)
    if problem:
        raise StudySetupError(f"cannot reach the MLflow tracking server at {uri}: {problem}")
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    quiet_logging(study_dir / "logs" / "ray.log")  # MLflow's database set-up logs go there too
    try:
        run = _open_parent_run(spec, study_dir, uri)
    except Exception as e:
        if created:
            shutil.rmtree(study_dir, ignore_errors=True)
        raise StudySetupError(f"cannot open the study's MLflow run at {uri}: {e}") from e
    (study_dir / "study.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    (study_dir / "state.json").write_text(json.dumps(run.__dict__, indent=2))
    return run


def _open_parent_run(spec: StudySpec, study_dir: Path, uri: str) -> StudyRun:
    artifacts = (study_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    study_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    return open_study_run(uri, spec.name, study_id, {
        "study": spec.name, "backbone": spec.model.backbone, "task": spec.task.name,
        "dataset": spec.dataset.name, "searcher": spec.searcher.type,
        "num_trials": spec.num_trials, "epochs": spec.budget.epochs,
        "steps_per_epoch": spec.budget.steps_per_epoch, "workers": spec.resources.workers,
        "seeds": ",".join(map(str, spec.seeds)), "metric": spec.metric.name,
    }, artifact_location=artifacts)


def run_study(spec: StudySpec, study_dir: Path, *, tracking_uri: str | None = None,
              address: str | None = None, optuna_storage: str | None = None,
              out: TextIO = sys.stdout) -> StudyOutcome:
    from ray import tune

    from pitfalls.results.report import write_comparison
    from pitfalls.sweep.callbacks import ConsoleProgress, ResultsRecorder
    from pitfalls.sweep.runtime import cluster_capacity, init_ray
    from pitfalls.sweep.space import param_space, search_algorithm
    from pitfalls.sweep.tracking import close_study_run
    from pitfalls.sweep.trial import TrialContext, run_trial

    study_dir = study_dir.resolve()
    if address is None and (problem := resource_problem(spec, local_capacity())):
        raise StudySetupError(problem)
    study_run = prepare_study_dir(spec, study_dir, tracking_uri)
    print(f"study {spec.name}: {spec.num_trials} trials -> {study_dir}", file=out)
    print(f"mlflow: {study_run.tracking_uri} (experiment {spec.name!r}, parent run "
          f"{study_run.parent_run_id})", file=out, flush=True)

    recorder = ResultsRecorder(spec, study_dir / RESULTS_FILE)
    try:  # whatever happens from here on, the parent run is closed with an honest status
        init_ray(address, study_dir / "logs" / "ray.log")
        capacity = cluster_capacity()
        if problem := resource_problem(spec, capacity):
            raise StudySetupError(problem)
        ctx = TrialContext(spec, study_run, str(study_dir))
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                        _trial_resources(spec, capacity))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric.name, mode=spec.metric.mode,
                search_alg=search_algorithm(spec, study_dir, optuna_storage),
                num_samples=spec.searcher.num_samples if spec.searcher.type == "optuna" else 1,
                max_concurrent_trials=_max_concurrent(spec, capacity),
                reuse_actors=spec.resources.workers == 1,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=str(study_dir), verbose=0,
                callbacks=[ConsoleProgress(spec, out), recorder],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
    finally:
        statuses = [r["status"] for r in recorder.rows.values()]
        completed, failed = statuses.count("completed"), statuses.count("failed")
        unfinished = max(spec.num_trials - completed - failed, 0)
        status = "FINISHED" if not unfinished else "KILLED"
        artifacts, table = [], ""
        if (study_dir / RESULTS_FILE).exists():
            table, report_paths = write_comparison(study_dir, spec)
            artifacts = [*report_paths, study_dir / RESULTS_FILE, study_dir / "study.yaml"]
        close_study_run(study_run, status, artifacts,
                        tags={"pitfalls.completed": completed, "pitfalls.failed": failed,
                              "pitfalls.unfinished": unfinished})
    return StudyOutcome(study_dir, completed, failed, unfinished, table)

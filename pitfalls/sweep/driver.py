"""`pitfalls run`: validated StudySpec -> Tune (grid or Optuna) -> trials -> MLflow + Parquet.

The study directory holds everything needed to inspect or rebuild the study:
  study.yaml        the resolved study (search space inlined)
  state.json        the study's identity (study id, MLflow URI, experiment and parent run) and
                    the study as it started: `pitfalls resume` refuses a study edited since
  driver.lock       held by the driver running the study (pitfalls.sweep.lock): one at a time
  history.jsonl     every epoch report as it arrived (so a resumed driver still has them); on
                    object storage each appended batch is an object of its own (history.d/)
  tune/             Tune's experiment state;  train/  Ray Train runs of multi-worker trials
  checkpoints/      each trial's checkpoints and its MLflow run id (pitfalls.sweep.checkpoints)
  results.parquet   one row per trial (pitfalls.results.schema), folded from results.d/ as
                    trials finish and complete once the study's run ends
  results.d/        one JSON row file per trial finished since the last fold
  comparison.md     the comparison table;  logs/ray.log  Ray's own output
  mlflow.db, mlartifacts/   the default MLflow store;  optuna.db  Optuna's storage
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from pitfalls.config import StudySpec
from pitfalls.fileio import atomic_write
from pitfalls.models.pretrained import hf_environment
from pitfalls.results import RESULTS_FILE
from pitfalls.sweep.credentials import CredentialsError, move_credentials, redact, study_uris
from pitfalls.sweep.runtime import quiet_logging
from pitfalls.sweep.storage import StudyStorage, existing_study_storage, has_experiment_state, local_storage
from pitfalls.sweep.tracking import StudyRun, check_reachable, default_tracking_uri, open_study_run

TUNE_DIR = "tune"
CHECKPOINT_DIR = "checkpoints"


class StudySetupError(RuntimeError):
    """The study cannot start (nothing has been written): one message for the user."""


class StudyExistsError(StudySetupError):
    pass


@dataclass(frozen=True)
class StudyOutcome:
    study_dir: Path  # the working directory (on object storage: its local copy)
    completed: int
    failed: int
    unfinished: int  # interrupted (Ctrl-C) or never started
    table_markdown: str
    location: str = ""  # what `pitfalls resume` takes: the directory or the study's URI


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
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpu_count())}


def gpu_count() -> int:
    """This machine's visible NVIDIA GPUs, without importing torch (the driver never trains):
    CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else torch where a GPU device exists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    if not Path("/dev/nvidia0").exists():
        return 0
    import torch

    return torch.cuda.device_count()


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


STATE_FILE = "state.json"


def study_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Fields that differ between two resolved studies, as `path: old -> new`."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += study_changes(a, b, path + ".")
        elif a != b:
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


def _with_defaults(started: dict) -> dict:
    """A study as it was resolved when it started, with the fields added since at their
    defaults (so a field a newer version added is not a change of definition)."""
    from pitfalls.config import StudyError, parse_study

    try:
        return parse_study(started, check_environment=False).to_dict()
    except StudyError:
        return started


def _refuse_existing(spec: StudySpec, storage: StudyStorage) -> None:
    state = storage.local / STATE_FILE
    started = json.loads(state.read_text()).get("study") if state.exists() else None
    changes = study_changes(_with_defaults(started), spec.to_dict()) if started else []
    where = storage.location
    how = f"resume it with `pitfalls resume {where}`"
    if changes:
        raise StudyExistsError(
            f"{where} already holds study {spec.name!r}, started with another definition "
            f"(changed: {'; '.join(changes)}); {how} (it runs the study as it started), or "
            "choose another --name or --storage for the new definition")
    raise StudyExistsError(f"{where} already holds this study; {how}, or choose another "
                           "--name or --storage, or delete it to start over")


def _remote_problem(spec: StudySpec, storage: StudyStorage, tracking_uri: str | None,
                    optuna_storage: str | None) -> str | None:
    """Why a study on object storage would still depend on files on this machine, or None."""
    if not storage.remote:
        return None
    import pyarrow.fs as pafs

    bucket = storage.root.split("/")[0]
    try:
        found = storage.fs.get_file_info(bucket).type == pafs.FileType.Directory
    except OSError as e:
        return f"storage {storage.uri}: cannot reach it ({e})"
    if not found:
        return f"storage {storage.uri}: bucket {bucket!r} does not exist (create it first)"
    if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        return (f"storage {storage.uri}: the default MLflow store is a sqlite file on this "
                "machine; pass --mlflow-uri (a tracking server, e.g. http://HOST:5000)")
    if spec.searcher.type == "optuna" and not (optuna_storage
                                               or os.environ.get("PITFALLS_OPTUNA_STORAGE")):
        return (f"storage {storage.uri}: the default Optuna storage is a sqlite file on this "
                "machine; pass --optuna-storage (e.g. postgresql+psycopg2://HOST/DB)")
    return None


def prepare_study_dir(spec: StudySpec, storage: StudyStorage, tracking_uri: str | None,
                      created: bool | None = None) -> StudyRun:
    """Create the study directory and its MLflow parent run; refuse an existing study.

    The MLflow server is checked before anything is written, and a directory this call created
    (or that did not exist before the caller took the study's lock: `created`) is removed again
    if the parent run cannot be opened: a failed start leaves nothing behind.
    """
    study_dir = storage.local
    if storage.remote and storage.exists(STATE_FILE):
        storage.pull()
    if (study_dir / "study.yaml").exists():
        _refuse_existing(spec, storage)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(study_dir)
    problem = check_reachable(uri)
    if problem:
        raise StudySetupError(f"cannot reach the MLflow tracking server at {uri}: {problem}")
    created = not study_dir.exists() if created is None else created
    study_dir.mkdir(parents=True, exist_ok=True)
    quiet_logging(study_dir / "logs" / "ray.log")  # MLflow's database set-up logs go there too
    try:
        run = _open_parent_run(spec, study_dir, uri)
    except Exception as e:
        if created:
            shutil.rmtree(study_dir, ignore_errors=True)
        raise StudySetupError(f"cannot open the study's MLflow run at {uri}: {e}") from e
    state = {**run.__dict__, "study": spec.to_dict()}
    if storage.remote:
        state["storage"] = storage.uri  # a working copy leads back to its bucket
    atomic_write(study_dir / STATE_FILE, json.dumps(state, indent=2))
    atomic_write(study_dir / "study.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    storage.push(STATE_FILE, "study.yaml")
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
        "selection_metric": spec.metric.selection, "select": spec.evaluation.select,
        "protocol": spec.evaluation.protocol,
    }, artifact_location=artifacts)


@contextlib.contextmanager
def _driver_lock(storage: StudyStorage, force: bool):
    """The study's driver lock (`pitfalls.sweep.lock`) for the block, refusals as StudySetupError."""
    from pitfalls.sweep.lock import StudyLocked, study_lock

    try:
        lock = study_lock(storage, force)
        lock.__enter__()
    except StudyLocked as e:
        raise StudySetupError(str(e)) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def run_study(spec: StudySpec, study_dir: Path | StudyStorage, *, tracking_uri: str | None = None,
              address: str | None = None, optuna_storage: str | None = None,
              out: TextIO | None = None, force: bool = False) -> StudyOutcome:
    """Start a new study in `study_dir` (a directory or a `StudyStorage`; must not hold one).
    Progress goes to `out` (default: this process's stdout at the time of the call); `force`
    takes over the study's driver lock from a driver that is gone (`pitfalls.sweep.lock`)."""
    try:  # credentials move to the environment: nothing below sees, stores or prints them
        tracking_uri, optuna_storage = study_uris(tracking_uri, optuna_storage)
    except CredentialsError as e:
        raise StudySetupError(str(e)) from None
    out = out or sys.stdout
    storage = study_dir if isinstance(study_dir, StudyStorage) else local_storage(study_dir)
    if problem := _remote_problem(spec, storage, tracking_uri, optuna_storage):
        raise StudySetupError(problem)
    if address is None and (problem := resource_problem(spec, local_capacity())):
        raise StudySetupError(problem)
    created = _first_missing(storage.local)
    with _driver_lock(storage, force):
        try:
            study_run = prepare_study_dir(spec, storage, tracking_uri, created is not None)
        except StudySetupError:
            if created is not None:  # the lock's directory, too: a failed start leaves nothing
                shutil.rmtree(created, ignore_errors=True)
            raise
        where = storage.location + (f" (working copy {storage.local})" if storage.remote else "")
        print(f"study {spec.name}: {spec.num_trials} trials -> {where}", file=out)
        return _execute(spec, storage, study_run, address, optuna_storage, out, restore=False)


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (None if `path` does)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _flush_pending(uri: str, study_dir: Path, out: TextIO) -> None:
    """Send metrics that trials could not send while the tracking server was unreachable."""
    from pitfalls.sweep.tracking import flush_pending
    from pitfalls.sweep.trial import pending_dir

    directory = pending_dir(study_dir)
    if not directory.exists():
        return
    sent, left = flush_pending(uri, directory)
    if sent or left:
        print(f"mlflow: sent {sent} record(s) that trials could not send earlier"
              + (f"; {left} still pending in {directory} (sent by `pitfalls resume`)" if left else ""),
              file=out, flush=True)


def load_study_dir(study_dir: Path) -> tuple[StudySpec, dict]:
    """The study in a study directory and its state; refuses a study edited since it started."""
    from pitfalls.config import StudyError, parse_study, read_yaml

    study_file, state_file = study_dir / "study.yaml", study_dir / STATE_FILE
    if not study_file.exists() or not state_file.exists():
        raise StudySetupError(f"{study_dir} holds no study (no study.yaml and {STATE_FILE}); "
                              "start one with `pitfalls run STUDY`")
    try:
        state = json.loads(state_file.read_text())
        raw = read_yaml(study_file)
    except (StudyError, ValueError) as e:
        raise StudySetupError(f"{study_dir}: cannot read the study's files: {e}") from None
    if "study" in state and (changes := study_changes(state["study"], raw)):
        raise StudySetupError(
            f"{study_file} was edited since the study started ({'; '.join(changes)}); a resumed "
            "study must run as it started: undo the edit, or run the new definition as a new "
            "study (`pitfalls run FILE --name NEW`)")
    try:
        spec = parse_study(raw, source=str(study_file), base_dir=study_dir)
    except StudyError as e:  # e.g. the dataset is no longer where it was
        raise StudySetupError(str(e)) from None
    return spec, state


def resume_study(study_dir: Path | str | StudyStorage, *, tracking_uri: str | None = None,
                 address: str | None = None, optuna_storage: str | None = None,
                 out: TextIO | None = None, force: bool = False) -> StudyOutcome:
    """Continue an interrupted study: finished trials stay as they are, unfinished and failed
    ones continue from their last checkpoint, in the same MLflow runs and Parquet rows.

    `study_dir` is the study's directory, or its URI on object storage (then possibly on
    another machine than the one that started it).
    """
    try:  # credentials move to the environment: nothing below sees, stores or prints them
        tracking_uri, optuna_storage = study_uris(tracking_uri, optuna_storage)
    except CredentialsError as e:
        raise StudySetupError(str(e)) from None
    from pitfalls.sweep.storage import StorageError

    out = out or sys.stdout
    try:
        storage = (study_dir if isinstance(study_dir, StudyStorage)
                   else existing_study_storage(str(study_dir)))
    except (StorageError, OSError) as e:
        raise StudySetupError(str(e)) from None
    if not storage.remote and not (storage.local / STATE_FILE).is_file():
        load_study_dir(storage.local)  # refuses a directory that holds no study, creating nothing
    with _driver_lock(storage, force):
        return _resume(storage, tracking_uri, address, optuna_storage, out)


def _resume(storage: StudyStorage, tracking_uri: str | None, address: str | None,
            optuna_storage: str | None, out: TextIO) -> StudyOutcome:
    from pitfalls.sweep.callbacks import HISTORY_FILE
    from pitfalls.sweep.storage import StorageError, tune_state_problem

    try:
        storage.pull()
    except (StorageError, OSError) as e:
        raise StudySetupError(str(e)) from None
    study_dir = storage.local
    spec, state = load_study_dir(study_dir)
    history = study_dir / HISTORY_FILE
    if problem := tune_state_problem(storage.fs, f"{storage.root}/{TUNE_DIR}",
                                     history.exists() and history.stat().st_size > 0):
        raise StudySetupError(  # Tune itself would silently start the whole study over
            f"cannot resume {spec.name}: {problem}; Ray Tune cannot restore this study")
    try:  # a study started before credentials were moved may hold them in its state
        uri = move_credentials(tracking_uri or state["tracking_uri"])
    except CredentialsError as e:
        raise StudySetupError(str(e)) from None
    if problem := check_reachable(uri):
        raise StudySetupError(f"cannot reach the MLflow tracking server at {uri}: {problem}")
    quiet_logging(study_dir / "logs" / "ray.log")
    _flush_pending(uri, study_dir, out)  # metrics an earlier session could not send
    try:
        study_run = open_study_run(uri, spec.name, state["study_id"], {})  # re-found by its tag
    except Exception as e:  # noqa: BLE001 - e.g. the server went away after the check above
        raise StudySetupError(f"cannot open the study's MLflow run at {uri}: {redact(str(e))[:300]}") from None
    print(f"resuming study {spec.name}: {spec.num_trials} trials in {storage.location}", file=out)
    return _execute(spec, storage, study_run, address, optuna_storage, out, restore=True)


def _execute(spec: StudySpec, storage: StudyStorage, study_run: StudyRun, address: str | None,
             optuna_storage: str | None, out: TextIO, restore: bool) -> StudyOutcome:
    from ray import tune

    from pitfalls.sweep.callbacks import ConsoleProgress, ResultsRecorder
    from pitfalls.sweep.runtime import cluster_capacity, init_ray
    from pitfalls.sweep.space import param_space, search_algorithm
    from pitfalls.sweep.trial import TrialContext, run_trial

    print(f"mlflow: {study_run.tracking_uri} (experiment {spec.name!r}, parent run "
          f"{study_run.parent_run_id})", file=out, flush=True)
    from pitfalls.sweep.storage import bind

    study_dir = storage.local
    bind(storage, spec)
    recorder = ResultsRecorder(spec, storage)
    stack = contextlib.ExitStack()
    try:  # whatever happens from here on, the parent run is closed with an honest status
        init_ray(address, study_dir / "logs" / "ray.log")
        stack.enter_context(_sigterm_as_interrupt())  # after ray.init, which installs its own
        capacity = cluster_capacity()
        if problem := resource_problem(spec, capacity):
            raise StudySetupError(problem)
        ctx = TrialContext(spec, study_run, str(study_dir), storage.fs, storage.train_root,
                           f"{storage.root}/{CHECKPOINT_DIR}", hf_env=hf_environment())
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                        _trial_resources(spec, capacity))
        tune_dir = f"{storage.root}/{TUNE_DIR}"
        done: set[str] = set()
        if restore:  # what earlier sessions recorded as finished
            recorder.setup()
            done = {t for t, r in recorder.rows.items() if r["status"] == "completed"}
        if restore and len(done) == spec.num_trials:
            print("every trial had already finished; nothing left to run", file=out)
        elif restore and has_experiment_state(storage.fs, tune_dir):
            from pitfalls.sweep.storage import release_finished_trials
            # (killed before Tune's first snapshot: nothing to restore, so the `else` starts the
            # study afresh; Tune's own restore would restart it with its searcher's sample
            # count lost, ending with every trial but the first never run)

            release_finished_trials(storage.fs, tune_dir, done)
            if spec.searcher.type == "optuna":
                from pitfalls.sweep.space import optuna_storage_url
                from pitfalls.sweep.storage import count_unseen_finished_trials

                count_unseen_finished_trials(storage.fs, tune_dir, done)

                optuna_storage_url(study_dir, optuna_storage)  # its password, if any, to PGPASSWORD
            # Tune's state (trials, searcher, callbacks) is unpickled from the study directory.
            tuner = tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True,
                                       resume_errored=True, param_space=param_space(spec),
                                       storage_filesystem=storage.fs)
            tuner.fit()
        else:
            ft = spec.fault_tolerance
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec),
                tune_config=tune.TuneConfig(
                    # the test split chooses nothing: a test_ metric is optimized as its val_ one
                    metric=spec.metric.selection, mode=spec.metric.mode,
                    search_alg=search_algorithm(spec, study_dir, optuna_storage, study_run.study_id),
                    num_samples=spec.searcher.num_samples if spec.searcher.type == "optuna" else 1,
                    max_concurrent_trials=_max_concurrent(spec, capacity),
                    reuse_actors=spec.resources.workers == 1,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_DIR, storage_path=storage.root, verbose=0,
                    storage_filesystem=storage.fs,
                    callbacks=[ConsoleProgress(spec, out), recorder],
                    # checkpoints are the trials' own (pitfalls.sweep.checkpoints), not Tune's
                    failure_config=tune.FailureConfig(max_failures=ft.trial_retries),
                ),
            )
            tuner.fit()
    finally:
        stack.close()
        try:
            outcome = _finish(spec, storage, study_run, recorder, optuna_storage, out)
        finally:
            bind(None)  # this driver's study is over: nothing looks it up any more
    return outcome


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what a scheduler, `kill` or `kubectl delete` sends) ends the study like Ctrl-C:
    Tune stops its trials (KILLED), the parent run is closed with its counts, and the study can
    be resumed. Only the main thread can install handlers; elsewhere SIGTERM stays as it is."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _finish(spec: StudySpec, storage: StudyStorage, study_run: StudyRun, recorder,
            optuna_storage: str | None, out: TextIO) -> StudyOutcome:
    """After the study ends however it ends: send what MLflow missed, write the reports, settle
    Optuna's storage, and close the parent run with honest counts (buffered when MLflow is
    down: `pitfalls resume` sends it)."""
    from pitfalls.results.write import write_comparison
    from pitfalls.sweep.tracking import close_study_run, end_stopped_trial_runs
    from pitfalls.sweep.trial import pending_dir

    study_dir = storage.local
    _flush_pending(study_run.tracking_uri, study_dir, out)
    recorder.setup()  # what every session recorded (a restored Tuner has its own copy)
    recorder.compact()  # results.parquet complete: every trial's row folded in
    statuses = [r["status"] for r in recorder.rows.values()]
    completed, failed = statuses.count("completed"), statuses.count("failed")
    unfinished = max(spec.num_trials - completed - failed, 0)
    if not unfinished and spec.searcher.type == "optuna":
        _settle_optuna(spec, study_dir, study_run, recorder.rows, optuna_storage, out)
    artifacts, table = [], ""
    if (study_dir / RESULTS_FILE).exists():
        table, report_paths = write_comparison(study_dir, spec)
        artifacts = [*report_paths, study_dir / RESULTS_FILE, study_dir / "study.yaml"]
        storage.push(*(p.name for p in report_paths))
    end_stopped_trial_runs(study_run)  # every trial of this session has stopped by now
    pending = close_study_run(study_run, "FINISHED" if not unfinished else "KILLED", artifacts,
                              tags={"pitfalls.completed": completed, "pitfalls.failed": failed,
                                    "pitfalls.unfinished": unfinished},
                              pending_dir=pending_dir(study_dir))
    if pending:
        print(f"mlflow: {study_run.tracking_uri} is unreachable; the study's run stays open there "
              f"and {pending} record(s) wait in {pending_dir(study_dir)}: `pitfalls resume "
              f"{storage.location}` sends them", file=out, flush=True)
    return StudyOutcome(study_dir, completed, failed, unfinished, table, storage.location)


def _settle_optuna(spec: StudySpec, study_dir: Path, study_run: StudyRun, rows: dict[str, dict],
                   optuna_storage: str | None, out: TextIO) -> None:
    """Close the Optuna trials an interrupted session left RUNNING (pitfalls.sweep.optuna_search)."""
    from pitfalls.sweep.optuna_search import settle
    from pitfalls.sweep.space import optuna_storage_url

    try:  # a study started before Optuna studies were named by the study's id has its name
        closed = settle(optuna_storage_url(study_dir, optuna_storage),
                        [study_run.study_id, spec.name], rows, spec.metric.selection)
    except Exception as e:  # noqa: BLE001 - the study's end must not fail on it; resume retries
        print(f"optuna: could not check its storage for trials left running: {redact(str(e))[:300]}",
              file=out, flush=True)
        return
    if any(closed.values()):
        print(f"optuna: closed {closed['COMPLETE']} trial(s) its storage still held as running "
              f"with their recorded values, and {closed['FAIL']} never run (marked failed)",
              file=out, flush=True)

"""One Tune trial: open its MLflow child run, train, report every epoch.

Single-worker trials run the training loop inside the Tune trial's own process: with
`reuse_actors=True` that process (torch, timm and the data already imported) serves one trial
after another, which removes Ray Train's per-trial start-up (controller, worker group, helper
actors, a fresh torch import: 25-40 s per trial on 2 cores). Multi-worker trials start a
`TorchTrainer` (Ray Train V2) whose workers run the same loop under DDP; rank 0 logs to MLflow,
and `TuneReportCallback` forwards rank 0's reports to Tune.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs

from pitfalls.config import StudySpec, TrialConfig, TrialParams
from pitfalls.results.phases import PREDICTIONS_DIR
from pitfalls.sweep.checkpoints import CheckpointStore
from pitfalls.sweep.tracking import RunCache, StudyRun, TrialLogger, open_trial_run
from pitfalls.train.checkpoint import epoch_of, history_of
from pitfalls.train.features import DirectoryFeatures

RUN_CACHE_FILE = "mlflow-run.json"
FEATURES_DIR = "features"  # <study>/features/<trial id>/: two-stage trials' CNN features
EPOCH_KEY = "train_loss"  # every epoch logs it: the run's steps of it are the epochs it has


@dataclass(frozen=True)
class TrialContext:
    study: StudySpec
    study_run: StudyRun
    study_dir: str  # the driver's working directory (MLflow records waiting to be sent)
    storage_fs: pyarrow.fs.FileSystem  # the study's storage (local/NFS or object storage)
    train_root: str  # Ray Train's runs of multi-worker trials
    checkpoint_root: str  # the trials' checkpoints (CheckpointStore), one folder per trial
    # the driver's Hugging Face cache settings, which validation checked the weights against
    hf_env: dict = field(default_factory=dict)

    def checkpoints(self, trial_id: str) -> CheckpointStore:
        return CheckpointStore(self.storage_fs, f"{self.checkpoint_root}/{trial_id}",
                               self.study.fault_tolerance.keep_checkpoints)

    def run_cache(self, trial_id: str) -> RunCache:
        """The trial's MLflow run id, kept beside its checkpoints (found again without a search)."""
        return RunCache(self.storage_fs, f"{self.checkpoint_root}/{trial_id}/{RUN_CACHE_FILE}")

    def predictions(self, trial_id: str) -> Predictions:
        return Predictions(self.storage_fs, f"{self.root}/{PREDICTIONS_DIR}/{trial_id}")

    def features(self, trial_id: str) -> DirectoryFeatures:
        """A two-stage trial's stored CNN features (`pitfalls.train.features`)."""
        return DirectoryFeatures(self.storage_fs, f"{self.root}/{FEATURES_DIR}/{trial_id}")

    @property
    def root(self) -> str:
        return self.checkpoint_root.rsplit("/", 1)[0]  # the study's root in its storage



@dataclass(frozen=True)
class Predictions:
    """Where a trial's prediction files go: `<study>/predictions/<trial id>/` in the study's
    storage, and the trial's MLflow artifacts (`predictions/`)."""

    fs: pyarrow.fs.FileSystem
    directory: str

    def local(self) -> Path:
        """A fresh local directory for the training loop to write them into."""
        import tempfile

        return Path(tempfile.mkdtemp(prefix="pitfalls-predictions-"))

    def publish(self, local: Path, logger: TrialLogger) -> None:
        """Copy them to the storage and MLflow; written again, the same files replace the old."""
        if not local.is_dir() or not any(local.iterdir()):
            return
        self.fs.create_dir(self.directory, recursive=True)
        pyarrow.fs.copy_files(str(local), self.directory, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=self.fs)
        from pitfalls.sweep.storage import is_disk

        logger.log_artifacts(local, "predictions", Path(self.directory) if is_disk(self.fs) else None)


def trial_run_name(trial_id: str, params: TrialParams, varied: list[str]) -> str:
    shown = [f"{k}={getattr(params, k)}" for k in varied if hasattr(params, k)]
    return " ".join([trial_id, *shown, f"seed={params.seed}"])


def run_trial(config: dict, *, ctx: TrialContext) -> None:
    """Tune function trainable."""
    import ray.tune

    from pitfalls.models.pretrained import use_hf_environment

    use_hf_environment(ctx.hf_env)  # before anything loads weights
    trial_id = ray.tune.get_context().get_trial_id()
    space = ctx.study.search_space
    cfg = TrialConfig(ctx.study, ctx.study.trial_params(config))
    labels = {n: config[n] for n in space.linked if n in config}  # a linked level, as one param
    opened = open_trial_run(ctx.study_run, trial_id,
                            trial_run_name(trial_id, cfg.params, space.varied_params),
                            {**cfg.params.as_dict(), **labels}, ctx.run_cache(trial_id))
    logger = TrialLogger(ctx.study_run.tracking_uri, opened.run_id, pending_dir(ctx.study_dir),
                         ref=opened.ref)
    try:
        if ctx.study.resources.workers == 1:
            _train_in_process(cfg, logger, ctx.checkpoints(trial_id), ctx.predictions(trial_id),
                              ctx.features(trial_id))
        else:
            _train_with_ray_train(cfg, trial_id, ctx, logger)
    except BaseException as e:
        logger.fail(e)
        raise
    logger.finish()


def pending_dir(study_dir: str | Path) -> Path:
    """Where metrics that could not reach MLflow wait to be sent (see TrialLogger)."""
    return Path(study_dir) / "logs" / "mlflow-pending"


class EpochLog:
    """MLflow logging of epochs that survives restarts without duplicates: each epoch is logged
    after its checkpoint is saved, an epoch MLflow already has is not logged again (a trial
    resumed from an older checkpoint re-runs it, with the same numbers), and epochs that a
    checkpoint holds but MLflow lacks (killed between the two) are logged on restore.

    When the server cannot be asked which epochs it has (down while the trial restarts), the
    answer is unknown, not "none": every epoch is then sent on the condition that the run lacks
    it (`if_missing`), decided when the server answers, so no step is ever logged twice."""

    def __init__(self, logger: TrialLogger):
        self.logger = logger
        self.logged = logged_epochs(logger)  # None: unknown
        self.sent: set[int] = set()

    def log(self, metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        if epoch in self.sent or (self.logged is not None and epoch in self.logged):
            return
        self.logger.log_epoch(metrics, if_missing=EPOCH_KEY if self.logged is None else None)
        self.sent.add(epoch)

    def restore(self, history: list[dict]) -> None:
        for metrics in history:
            self.log(metrics)


def logged_epochs(logger: TrialLogger) -> set[int] | None:
    """Epochs MLflow has (or that wait in the logger's pending file); None when unknown (the
    server cannot be reached), which is not the same as none."""
    return logger.logged_steps(EPOCH_KEY)


def tune_metrics(metrics: dict, checkpoint: dict, epochs: int) -> dict:
    """What Tune sees of an epoch: the metrics, plus the whole history at the last epoch (so the
    results row has every epoch even when earlier ones were reported before a restart)."""
    if epoch_of(checkpoint) == epochs:
        return {**metrics, "history": history_of(checkpoint)}
    return metrics


def already_finished(resume: dict | None, epochs: int) -> dict | None:
    """Tune's last report for a trial whose final checkpoint was saved but whose final report
    never reached Tune (the driver died in between): nothing is left to train, yet Tune needs that
    report (with the metric it optimizes) to count the trial as finished."""
    if resume is None or epoch_of(resume) < epochs:
        return None
    return tune_metrics(history_of(resume)[-1], resume, epochs)


def _train_in_process(cfg: TrialConfig, logger: TrialLogger, store: CheckpointStore,
                      predictions: Predictions, features: DirectoryFeatures) -> None:
    import ray.tune
    import torch

    from pitfalls.train import train

    res = cfg.study.resources
    torch.set_num_threads(max(1, int(res.cpus_per_worker)))
    device = torch.device("cuda" if res.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
    epochs = EpochLog(logger)
    resume = store.latest()
    if resume is not None:
        epochs.restore(history_of(resume))
    final = already_finished(resume, cfg.epochs)
    if final is not None:
        ray.tune.report(final)
        return

    local = predictions.local()

    def report(metrics: dict, state: dict) -> None:
        if epoch_of(state) == cfg.epochs:  # before the final checkpoint: a trial
            predictions.publish(local, logger)  # killed in between redoes its last epoch
        store.save(state)  # before Tune or MLflow hear of the epoch
        ray.tune.report(tune_metrics(metrics, state, cfg.epochs))
        epochs.log(metrics)

    try:
        train(cfg, report=report, device=device, resume=resume, snapshot=True,
              on_setup=logger.log_params, predictions=local, features=features)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _worker_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker; the process group is already set up (gloo/nccl)."""
    import ray.train
    import ray.train.torch
    import torch

    from pitfalls.models.pretrained import use_hf_environment
    from pitfalls.train import train

    cfg: TrialConfig = loop_config["cfg"]
    use_hf_environment(loop_config["hf_env"])
    torch.set_num_threads(max(1, int(cfg.study.resources.cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()
    epochs = None
    if rank == 0:
        epochs = EpochLog(TrialLogger(loop_config["tracking_uri"], loop_config["run_id"],
                                      pending_dir(loop_config["study_dir"]), ref=loop_config["run_ref"]))
    store: CheckpointStore = loop_config["checkpoints"]
    predictions: Predictions = loop_config["predictions"]
    local = predictions.local()
    resume = store.latest()  # every rank: the same state (a restarted worker group included)
    if resume is not None and epochs is not None:
        epochs.restore(history_of(resume))
    final = already_finished(resume, cfg.epochs)
    if final is not None:
        ray.train.report(final, checkpoint=None)
        return

    def report(metrics: dict, state: dict) -> None:
        shown = tune_metrics(metrics, state, cfg.epochs)
        if rank == 0:
            if epoch_of(state) == cfg.epochs:
                predictions.publish(local, epochs.logger)
            store.save(state)
        ray.train.report(shown, checkpoint=None)  # a barrier: every rank reports the same
        if rank == 0:
            epochs.log(metrics)

    try:
        train(cfg, report=report, device=ray.train.torch.get_device(), resume=resume, snapshot=True,
              on_setup=epochs.logger.log_params if epochs is not None else None, predictions=local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _train_with_ray_train(cfg: TrialConfig, trial_id: str, ctx: TrialContext, logger: TrialLogger) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = cfg.study.resources
    ft = cfg.study.fault_tolerance
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "tracking_uri": ctx.study_run.tracking_uri,
                           "run_id": logger.run_id, "run_ref": logger.ref,
                           "study_dir": ctx.study_dir, "checkpoints": ctx.checkpoints(trial_id),
                           "predictions": ctx.predictions(trial_id), "hf_env": ctx.hf_env},
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id,  # stable across restarts, so a restored trial finds its Train run
            storage_path=ctx.train_root,
            storage_filesystem=ctx.storage_fs,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=ft.worker_retries),
        ),
    )
    trainer.fit()

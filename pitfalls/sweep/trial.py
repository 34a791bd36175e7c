"""One Tune trial: open its MLflow child run, train, report every epoch.

Single-worker trials run the training loop inside the Tune trial's own process: with
`reuse_actors=True` that process (torch, timm and the data already imported) serves one trial
after another, which removes Ray Train's per-trial start-up (controller, worker group, helper
actors, a fresh torch import: 25-40 s per trial on 2 cores). Multi-worker trials start a
`TorchTrainer` (Ray Train V2) whose workers run the same loop under DDP; rank 0 logs to MLflow,
and `TuneReportCallback` forwards rank 0's reports to Tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pitfalls.config import StudySpec, TrialConfig, TrialParams
from pitfalls.sweep.tracking import StudyRun, TrialLogger, open_trial_run


@dataclass(frozen=True)
class TrialContext:
    study: StudySpec
    study_run: StudyRun
    study_dir: str


def trial_run_name(trial_id: str, params: TrialParams, varied: list[str]) -> str:
    shown = [f"{k}={getattr(params, k)}" for k in varied if hasattr(params, k)]
    return " ".join([trial_id, *shown, f"seed={params.seed}"])


def run_trial(config: dict, *, ctx: TrialContext) -> None:
    """Tune function trainable."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = TrialConfig(ctx.study, TrialParams.from_dict(config))
    run_id = open_trial_run(ctx.study_run, trial_id,
                            trial_run_name(trial_id, cfg.params, ctx.study.search_space.varied_factors),
                            cfg.params.as_dict())
    logger = TrialLogger(ctx.study_run.tracking_uri, run_id)
    try:
        if ctx.study.resources.workers == 1:
            _train_in_process(cfg, logger)
        else:
            _train_with_ray_train(cfg, trial_id, ctx, run_id)
    except BaseException as e:
        logger.fail(e)
        raise
    logger.finish()


def _train_in_process(cfg: TrialConfig, logger: TrialLogger) -> None:
    import ray.tune
    import torch

    from pitfalls.train import train

    res = cfg.study.resources
    torch.set_num_threads(max(1, int(res.cpus_per_worker)))
    device = torch.device("cuda" if res.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")

    def report(metrics: dict) -> None:
        logger.log_epoch(metrics)
        ray.tune.report(metrics)

    train(cfg, report=report, device=device)


def _worker_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker; the process group is already set up (gloo/nccl)."""
    import ray.train
    import ray.train.torch
    import torch

    from pitfalls.train import train

    cfg: TrialConfig = loop_config["cfg"]
    torch.set_num_threads(max(1, int(cfg.study.resources.cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()
    logger = TrialLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None

    def report(metrics: dict) -> None:
        if logger is not None:
            logger.log_epoch(metrics)
        ray.train.report(metrics)  # a barrier: every rank reports the same (gathered) metrics

    train(cfg, report=report, device=ray.train.torch.get_device())


def _train_with_ray_train(cfg: TrialConfig, trial_id: str, ctx: TrialContext, run_id: str) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = cfg.study.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "tracking_uri": ctx.study_run.tracking_uri, "run_id": run_id},
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id,  # stable across restarts, so a restored trial finds its Train run
            storage_path=str(Path(ctx.study_dir, "train").resolve()),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()

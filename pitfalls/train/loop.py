"""The training recipe of one trial: plain PyTorch, no Ray import, read top to bottom.

`train()` sets up the data, the model, the optimizer and the samplers (`setup`), continues from a
checkpoint if given (`restore`), then runs epochs: training steps (`train_epoch`), evaluation and
the end-of-training diagnoses (`evaluate_epoch`), and a report with the checkpoint (`capture`).
The Ray layer plugs in through `report(metrics, checkpoint)` (Tune report, MLflow logging,
checkpoint storage); benchmarks and tests call `train()` directly.

Under DDP (a process group already initialized, as Ray Train does) each rank trains on its own
share of the batch's videos and evaluates a shard of the validation videos; per-video scores
are gathered so every rank reports the same metrics.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pitfalls.config import TrialConfig, precise_bn_batches
from pitfalls.config.modes import MODES
from pitfalls.data.base import VideoData
from pitfalls.data.load import anticipation_tools, load_data
from pitfalls.data.sampler import CarriedSampler, FrameSampler, SequenceSampler
from pitfalls.machine import machine_params
from pitfalls.models.inputs import make_batch, sequence_arrays
from pitfalls.models.norms import NormOptions
from pitfalls.models.precise_bn import batch_stat_layers, update_bn_stats
from pitfalls.models.pretrained import REINIT_KEY, reinit_params
from pitfalls.models.temporal import State, state_to
from pitfalls.models.video_model import VideoModel, build_model
from pitfalls.train import checkpoint as ckpt
from pitfalls.train.augment import augment
from pitfalls.train.cheat_gap import cheat_gap_metrics, cheat_gap_records
from pitfalls.train.evaluation import evaluate, gather
from pitfalls.train.fast import FastPath, Stepper, prepare_model, resolve
from pitfalls.train.optim import make_optimizer
from pitfalls.train.predictions import write_predictions
from pitfalls.train.prefetch import HostBatch, HostBuffers, draws, feeder
from pitfalls.train.selection import Selection, selected_weights
from pitfalls.train.tasks import Task, make_task, training_loss

# report(metrics, checkpoint): after every epoch; the checkpoint is None unless asked for
Report = Callable[[dict, "dict | None"], None]


def _ignore(metrics: dict, checkpoint: dict | None) -> None:
    return None


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "Distributed":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def share(self, items: list) -> list:
        """This rank's equal share of a batch's sequences (lanes)."""
        n = len(items) // self.world_size
        return items[self.rank * n:(self.rank + 1) * n]


@dataclass
class Run:
    """One trial's training, set up: what the epochs use and what a checkpoint holds."""

    cfg: TrialConfig
    d: Distributed
    device: torch.device
    data: VideoData
    task: Task
    fast: FastPath
    model: VideoModel
    net: torch.nn.Module  # the model, DDP-wrapped when there are several ranks
    optimizer: torch.optim.Optimizer
    stepper: Stepper
    sampler: SequenceSampler | CarriedSampler | FrameSampler
    extra: SequenceSampler | FrameSampler  # PreciseBN's and the probes' batches: the training draws stay the same
    aug_rng: torch.Generator
    precise_bn: int  # batches PreciseBN recomputes BN statistics over before each evaluation
    selection: Selection  # the epoch evaluated on test, and its weights
    epochs: int = 0  # the last epoch of this stage (the trial's last unless two-stage)
    steps_per_epoch: int = 0
    frames: bool = False  # batches of single frames across videos (frame_only, two_stage 1)
    state: State | None = None  # the head's carried state (carry_hidden)
    history: list[dict] = field(default_factory=list)
    first_epoch: int = 1
    buffers: HostBuffers | None = None  # host buffers of batches (training, evaluation), kept across epochs

    @property
    def batch_len(self) -> int:
        """Frames per sequence of a training batch (1: single frames)."""
        return 1 if self.frames else self.cfg.params.seq_len

    def batch(self, picks: list[tuple[int, int]]):
        return make_batch(self.data.train, self.d.share(picks), self.batch_len,
                          self.device, self.task.labels)

    def host_batch(self, picks: list[tuple[int, int]]) -> HostBatch:
        """This rank's share of a training batch on the host (built by the feeder's thread)."""
        frames, labels = sequence_arrays(self.data.train, self.d.share(picks), self.batch_len,
                                         self.task.labels)
        return HostBatch(frames, self.batch_len, labels)

    def extra_batches(self, n: int) -> list[torch.Tensor]:
        return [self.batch(self.extra.sample())[0] for _ in range(n)]


def setup(cfg: TrialConfig, device: torch.device,
          on_setup: Callable[[dict], None] | None = None) -> Run:
    """Data, task, model, optimizer, samplers and RNGs of a trial, seeded from its parameters.

    A frame-wise mode (frame_only, a two-stage trial's first stage) gets a frame classifier as
    its head and batches of single frames across videos (`pitfalls.config.modes`)."""
    d = Distributed.current()
    p, study = cfg.params, cfg.study
    mode = MODES[p.training]
    torch.manual_seed(p.seed)  # same init on every rank; DDP also broadcasts rank 0's weights

    data = load_data(study.dataset)
    tools = (anticipation_tools(study.dataset.name, study.task.tools, data.tool_names)
             if study.task.name == "anticipation" else ())
    task = make_task(study.task.name, len(data.phase_names), data.tool_names, tools,
                     study.task.horizon, data.fps, study.evaluation.protocol)
    fast = resolve(study.performance, device)
    if device.type == "cpu":  # the few CPU ops with a faster racy variant take the exact one
        torch.use_deterministic_algorithms(True, warn_only=True)
    if on_setup is not None:
        on_setup(fast.as_params())
        on_setup(machine_params())  # what the last bits depend on (docs/reproduction.md)
    model_params = p.for_target("model")
    if mode.frame_batches:  # stage 1 of two_stage trains the CNN as frame_only does
        model_params["temporal_head"] = None
    model = build_model(**model_params, num_classes=task.outputs,
                        head_options=(study.model.head_options(model_params["temporal_head"])
                                      if model_params["temporal_head"] else None),
                        norm_options=NormOptions(study.model.group_norm_groups,
                                                 study.model.whitening_group_size),
                        weights=study.model.weights, pretrained=study.model.pretrained,
                        reinit_replaced_norms=study.model.reinit_replaced_norms).to(device)
    if on_setup is not None and model.reinitialized is not None:  # which layers start from scratch
        on_setup(reinit_params(",".join(model.reinitialized)))
    model = prepare_model(model, fast)
    net: torch.nn.Module = model
    if d.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, p.for_target("optimizer"))
    stepper = Stepper(net, optimizer, training_loss(task, p.class_weights, data.train, device),
                      fast, model.head.lanes)

    lengths = [len(v) for v in data.train]
    sampling = p.for_target("sampler")
    if mode.frame_batches:  # the same frames per step as the end-to-end arm, across videos
        per_step = p.videos_per_batch * p.seq_len
        sampler = FrameSampler(lengths, per_step, rng=np.random.default_rng([p.seed, 7]))
        extra = FrameSampler(lengths, per_step, rng=np.random.default_rng([p.seed, 11]))
    else:
        sampler_cls = CarriedSampler if sampling.pop("carry_hidden") else SequenceSampler
        sampler = sampler_cls(lengths, **sampling, rng=np.random.default_rng([p.seed, 7]))
        extra = SequenceSampler(lengths, **sampling, rng=np.random.default_rng([p.seed, 11]))
    aug_rng = torch.Generator().manual_seed(p.seed * 1000 + 13 + d.rank)
    if p.norm == "sync_batch" and d.world_size == 1:
        warnings.warn("norm 'sync_batch' with one worker is plain BatchNorm", stacklevel=2)
    precise_bn = precise_bn_batches(cfg) if batch_stat_layers(model) else 0
    selection = Selection(study.metric.selection, study.metric.mode, study.evaluation.select)
    epochs, steps = study.budget.stages(p.training)[0]
    return Run(cfg, d, device, data, task, fast, model, net, optimizer, stepper, sampler, extra,
               aug_rng, precise_bn, selection, epochs, steps, mode.frame_batches,
               buffers=HostBuffers(device))


def restore(run: Run, checkpoint: dict) -> None:
    """Continue from `checkpoint` (see `capture`): the next epoch is the one after it."""
    run.model.load_state_dict(checkpoint[ckpt.MODEL])
    run.optimizer.load_state_dict(checkpoint[ckpt.OPTIMIZER])
    if ckpt.SCALER in checkpoint:
        run.stepper.scaler.load_state_dict(checkpoint[ckpt.SCALER])
    run.sampler.load_state_dict(checkpoint[ckpt.SAMPLER])
    run.extra.load_state_dict(checkpoint[ckpt.EXTRA_SAMPLER])
    torch.set_rng_state(checkpoint[ckpt.TORCH_RNG])
    ranks = checkpoint[ckpt.RANKS]
    if len(ranks) == run.d.world_size:  # per-rank parts only fit the same world size
        run.aug_rng.set_state(ranks[run.d.rank][ckpt.AUG_RNG])
        run.state = state_to(ranks[run.d.rank][ckpt.HEAD_STATE], run.device)
    run.history = ckpt.history_of(checkpoint)
    run.first_epoch = ckpt.epoch_of(checkpoint) + 1
    if ckpt.SELECTION in checkpoint:  # absent from checkpoints of older versions
        run.selection.load_state_dict(checkpoint[ckpt.SELECTION])


def capture(run: Run, epoch: int) -> dict:
    """Everything needed to continue exactly after `epoch` (from every rank under DDP), in the
    plain form a checkpoint holds (`ckpt.plain`: tensors, numbers, strings, None, dicts, lists
    and tuples; the forms of each part are listed in `pitfalls.train.checkpoint`), so that it
    loads with `torch.load(weights_only=True)`."""
    mine = ckpt.plain({ckpt.AUG_RNG: run.aug_rng.get_state(),
                       ckpt.HEAD_STATE: state_to(run.state, "cpu") if run.cfg.params.carry_hidden else None},
                      f"checkpoint[{ckpt.RANKS!r}][{run.d.rank}]")
    ranks = [mine]
    if run.d.world_size > 1:
        ranks = [None] * run.d.world_size
        dist.all_gather_object(ranks, mine)
    return ckpt.plain({
        ckpt.EPOCH: epoch, ckpt.STAGE: 1, ckpt.HISTORY: list(run.history), ckpt.RANKS: ranks,
        ckpt.MODEL: run.model.state_dict(), ckpt.OPTIMIZER: run.optimizer.state_dict(),
        ckpt.SCALER: run.stepper.scaler.state_dict(),
        ckpt.SAMPLER: run.sampler.state_dict(), ckpt.EXTRA_SAMPLER: run.extra.state_dict(),
        ckpt.TORCH_RNG: torch.get_rng_state(),
        ckpt.SELECTION: run.selection.state_dict(),
    })


def train_epoch(run: Run) -> float:
    """One epoch of training steps; the mean loss (read from the device once)."""
    p, steps = run.cfg.params, run.steps_per_epoch
    run.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    lanes = run.model.head.lanes
    # The draws are made here, in step order and within the epoch; the feeder builds the
    # batches (in a background thread when the run prefetches): the same batches either way.
    with feeder(run.host_batch, run.device, run.fast.prefetch, run.buffers) as feed:
        for (_, reset), (x, labels) in feed.batches(draws(run.sampler.sample, steps,
                                                              p.carry_hidden)):
            # same draw on every rank: each rank takes its share of the sequences (lanes)
            if p.carry_hidden:
                run.state = lanes.reset(run.state, np.asarray(run.d.share(list(reset))), run.device)
            else:
                run.state = None
            x = augment(x, run.cfg.study.augmentation, run.aug_rng)
            loss, new_state = run.stepper.step(x, labels, run.state)
            run.state = new_state if p.carry_hidden else None
            loss_sum += loss
    train_loss = loss_sum.item() / steps
    if run.d.world_size > 1:
        t = torch.tensor([train_loss], dtype=torch.float64, device=run.device)  # NCCL: on GPU
        dist.all_reduce(t)
        train_loss = t.item() / run.d.world_size
    return train_loss


def evaluate_epoch(run: Run, epoch: int) -> dict:
    """Validation metrics (after PreciseBN, if the trial uses it); after the last epoch also
    the cheat gap and the probes, when the study asks for them."""
    p, study, d = run.cfg.params, run.cfg.study, run.d
    last = epoch == run.cfg.epochs  # the trial's last epoch (never in a two-stage trial's stage 1)
    if run.precise_bn:
        update_bn_stats(run.model, run.extra_batches(run.precise_bn))
    shard = run.data.val[d.rank::d.world_size]
    records, val_loss_sum, frames = gather(*evaluate(run.model, shard, run.task, run.device, run.fast,
                                                     buffers=run.buffers), d.rank, d.world_size)
    metrics = {"val_loss": val_loss_sum / max(frames, 1), **run.task.summarize(records)}
    if run.model.reinitialized is not None:  # the results row's record (pretrained weights)
        metrics[REINIT_KEY] = ",".join(run.model.reinitialized)
    if study.evaluation.cheat_gap and last:  # a diagnosis of the trained model
        seen = run.data.train[:len(run.data.val)][d.rank::d.world_size]
        for split, videos in (("val", shard), ("train", seen)):
            batch, running = cheat_gap_records(run.model, videos, run.task, p.seq_len, run.device,
                                               run.fast, p.carry_hidden)
            metrics.update(cheat_gap_metrics(run.task, gather(batch, 0.0, 0, d.rank, d.world_size)[0],
                                             gather(running, 0.0, 0, d.rank, d.world_size)[0], split))
    return metrics


def final_evaluation(run: Run, predictions: Path | None) -> dict:
    """After the last epoch, with the selected epoch's weights: the test split, evaluated once
    (`test_*`), and the per-frame predictions of val and test written to `predictions`."""
    d = run.d
    out: dict = {"selected_epoch": run.selection.epoch}
    with selected_weights(run.model, run.selection):
        for split in ("val", "test"):
            videos = run.data.splits.get(split, [])
            if not videos or (split == "val" and predictions is None):
                continue
            mine = list(range(len(videos)))[d.rank::d.world_size]
            outputs: list[np.ndarray] = []
            records, loss_sum, frames = gather(
                *evaluate(run.model, [videos[i] for i in mine], run.task, run.device, run.fast, outputs,
                          buffers=run.buffers),
                d.rank, d.world_size)
            if split == "test":
                out.update({"test_loss": loss_sum / max(frames, 1), **run.task.summarize(records, "test_")})
            if predictions is not None:
                indexed, _, _ = gather(list(zip(mine, outputs)), 0.0, 0, d.rank, d.world_size)
                if d.rank == 0:
                    order = sorted(indexed, key=lambda pair: pair[0])
                    write_predictions(predictions, split, run.data, run.task,
                                      [videos[i] for i, _ in order], [o for _, o in order])
    return out


def evaluate_checkpoint(cfg: TrialConfig, checkpoint: dict, device: torch.device | None = None,
                        predictions: Path | None = None) -> dict:
    """The final evaluation redone from a trial's stored checkpoint (its selection included):
    the same `test_*` metrics and prediction files as at the end of its training."""
    run = setup(cfg, device or torch.device("cpu"))
    restore(run, checkpoint)
    return final_evaluation(run, predictions)


def _probe(run: Run) -> dict:
    """Pitfall probes on the trained model, on the first `seq_len` frames of two val videos."""
    from pitfalls.probes.summary import probe_model

    val = run.data.val
    picks = [(i % len(val), 0) for i in range(2)]
    length = min(run.cfg.params.seq_len, *(len(v) for v in val))
    clip, labels = make_batch(val, picks, max(length, 2), run.device, run.task.labels)
    return probe_model(run.model, clip, labels[0] if run.task.name == "phase" else None,
                       run.extra_batches(4))


def run_epochs(run: Run, report: Report, *, snapshot: bool, predictions: Path | None) -> dict:
    """The epochs of `run`'s (first) stage, from `run.first_epoch` on; the last one's metrics.

    A two-stage trial's first stage reports `stage: 1` with each epoch and never reaches the
    trial's last epoch here (the test split is evaluated after stage 2)."""
    study, p = run.cfg.study, run.cfg.params
    two_stage, last = p.training == "two_stage", run.cfg.epochs
    metrics: dict = dict(run.history[-1]) if run.history else {}
    for epoch in range(run.first_epoch, run.epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_epoch(run)
        train_s = time.perf_counter() - t0
        measured = evaluate_epoch(run, epoch)
        metrics = {
            "epoch": epoch, **({"stage": 1} if two_stage else {}), "train_loss": train_loss,
            **measured,
            "train_frames_per_s": run.steps_per_epoch * p.videos_per_batch * p.seq_len / train_s,
            "epoch_s": time.perf_counter() - t0,
            "world_size": run.d.world_size,
        }
        if epoch == last and study.evaluation.probes:
            metrics.update(_probe(run))
        run.selection.offer(epoch, metrics, run.model)
        if epoch == last:
            metrics.update(final_evaluation(run, predictions if study.evaluation.predictions else None))
        run.history.append(metrics)
        report(metrics, capture(run, epoch) if snapshot else None)
    return metrics


def train(cfg: TrialConfig, report: Report = _ignore, device: torch.device | None = None, *,
          resume: dict | None = None, snapshot: bool = False,
          on_setup: Callable[[dict], None] | None = None, predictions: Path | None = None) -> dict:
    """Train a single-stage trial (end_to_end, frame_only): see `pitfalls.train.run.train`."""
    run = setup(cfg, device or torch.device("cpu"), on_setup)
    if resume is not None:
        restore(run, resume)
    return run_epochs(run, report, snapshot=snapshot, predictions=predictions)


__all__ = ["Distributed", "Report", "Run", "capture", "evaluate_checkpoint", "evaluate_epoch",
           "final_evaluation", "restore", "run_epochs", "setup", "train", "train_epoch"]

"""The per-worker training loop: plain PyTorch, no Ray import, one readable recipe.

`train()` runs one trial end to end (data, model, optimizer, epochs of train steps, evaluation)
and calls `report(metrics)` after every epoch. The Ray layer plugs in through that hook (Tune
report + MLflow logging); benchmarks and tests call `train()` directly. Under DDP (a process
group already initialized, as Ray Train does) each rank trains on its own share of the batch's
videos and evaluates a shard of the validation videos; per-video scores are gathered so every
rank reports the same metrics.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from pitfalls.config import TrialConfig, precise_bn_batches
from pitfalls.data.base import Video
from pitfalls.data.load import anticipation_tools, load_data
from pitfalls.data.sampler import CarriedSampler, SequenceSampler
from pitfalls.models.precise_bn import batch_stat_layers, update_bn_stats
from pitfalls.models.video_model import State, VideoModel, build_model
from pitfalls.train.augment import augment
from pitfalls.train.cheat_gap import cheat_gap_metrics, cheat_gap_records
from pitfalls.train.fast import FastPath, Stepper, frames_layout, prepare_model, resolve
from pitfalls.train.tasks import PhaseTask, Task, make_task

Report = Callable[[dict], None]
EVAL_CHUNK = 64  # frames per forward pass in evaluation; the LSTM state is carried across chunks


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


def to_input(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1] on `device`."""
    x = torch.from_numpy(frames)
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    return x.movedim(-1, -3).float().div_(127.5).sub_(1.0)


def make_batch(videos: list[Video], picks: list[tuple[int, int]], seq_len: int,
               device: torch.device, task: Task | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Frames (B, T, 3, H, W) and the task's labels (each (B, T, ...)) of the picked sequences."""
    task = task or PhaseTask(0)
    frames = np.stack([np.asarray(videos[v].frames[s:s + seq_len]) for v, s in picks])
    labels = tuple(
        torch.from_numpy(np.stack([lab[s:s + seq_len] for lab, (_, s) in zip(per_video, picks)])).to(device)
        for per_video in zip(*(task.labels(videos[v]) for v, _ in picks)))
    return to_input(frames, device), labels


@torch.no_grad()
def evaluate(model: VideoModel, videos: list[Video], task: Task,
             device: torch.device, fast: FastPath | None = None) -> tuple[list, float, int]:
    """Online evaluation of whole videos in order, the LSTM state carried from chunk to chunk
    as a deployed model would see them: per-video records, summed loss, frame count."""
    model.eval()
    fast = fast or resolve_default(device)
    records, loss_sum, frames = [], 0.0, 0
    for video in videos:
        state, outputs = None, []
        labels = task.labels(video)
        for start in range(0, len(video), EVAL_CHUNK):
            stop = min(start + EVAL_CHUNK, len(video))
            x = frames_layout(to_input(np.asarray(video.frames[start:stop])[None], device), fast)
            with fast.autocast():
                out, state = model(x, state)
            out = out.float()
            y = [torch.from_numpy(lab[None, start:stop]).to(device) for lab in labels]
            loss_sum += task.loss(out, y).item() * (stop - start)
            outputs.append(out[0].cpu().numpy())
        records.append(task.video_record(np.concatenate(outputs), video))
        frames += len(video)
    return records, loss_sum, frames


def _gather(records: list, loss_sum: float, frames: int, d: Distributed):
    if d.world_size == 1:
        return records, loss_sum, frames
    parts: list = [None] * d.world_size
    dist.all_gather_object(parts, (records, loss_sum, frames))
    return ([r for p in parts for r in p[0]], sum(p[1] for p in parts), sum(p[2] for p in parts))


def _probe(model: VideoModel, val_videos: list[Video], seq_len: int, device: torch.device,
           task: Task, train_batches: list[torch.Tensor]) -> dict:
    """Pitfall probes on the trained model, on the first `seq_len` frames of two val videos."""
    from pitfalls.probes.summary import probe_model

    picks = [(i % len(val_videos), 0) for i in range(2)]
    length = min(seq_len, *(len(v) for v in val_videos))
    clip, labels = make_batch(val_videos, picks, max(length, 2), device, task)
    return probe_model(model, clip, labels[0] if task.name == "phase" else None, train_batches)


def _reset_lanes(state: State | None, reset: np.ndarray, device: torch.device) -> State | None:
    """Zero the carried LSTM state of lanes that start a new video; detach the rest (truncated
    BPTT: gradients stop at the chunk boundary, the information flows on)."""
    if state is None:
        return None
    keep = torch.from_numpy(~reset).to(device=device, dtype=state[0].dtype).view(1, -1, 1)
    return (state[0].detach() * keep, state[1].detach() * keep)


def _rank_state(d: Distributed, aug_rng: torch.Generator, state: State | None) -> list[dict]:
    """Per-rank parts of a checkpoint (augmentation RNG, carried LSTM state), from every rank."""
    mine = {"aug_rng": aug_rng.get_state(),
            "hidden": None if state is None else tuple(t.detach().cpu() for t in state)}
    if d.world_size == 1:
        return [mine]
    parts: list = [None] * d.world_size
    dist.all_gather_object(parts, mine)
    return parts


def resolve_default(device: torch.device) -> FastPath:
    """The fast path a study with no `performance:` block gets on `device`."""
    from pitfalls.config import PerformanceSpec

    return resolve(PerformanceSpec(), device)


def train(cfg: TrialConfig, report: Report = lambda m: None,
          device: torch.device | None = None, *, resume: dict | None = None,
          snapshot: bool = False, on_setup: Callable[[dict], None] | None = None) -> dict:
    """Train one trial; return the last epoch's metrics.

    `on_setup` receives the resolved fast path (`FastPath.as_params()`: precision, layout, ...)
    once, before the first step, for the trial's record.

    `snapshot=True`: every epoch ends with `report(metrics, state)`, where `state` is everything
    needed to continue exactly from there (model, optimizer, samplers, RNGs, carried LSTM state,
    the metrics so far); `resume=state` continues such a run at the next epoch, bit for bit as
    if it had not stopped (same world size). The Ray layer stores `state` as the trial's
    checkpoint; plain callers get `report(metrics)`.
    """
    d = Distributed.current()
    p, study = cfg.params, cfg.study
    device = device or torch.device("cpu")
    torch.manual_seed(p.seed)  # same init on every rank; DDP also broadcasts rank 0's weights

    data = load_data(study.dataset)
    train_videos, val_videos = data.train, data.val
    tools = (anticipation_tools(study.dataset.name, study.task, data.tool_names)
             if study.task.name == "anticipation" else ())
    task = make_task(study.task.name, len(data.phase_names), data.tool_names, tools,
                     study.task.horizon, data.fps)
    fast = resolve(study.performance, device)
    if on_setup is not None:
        on_setup(fast.as_params())
    model = build_model(study.model.backbone, p.norm, p.frozen_stages, task.outputs,
                        study.model.hidden_size, study.model.group_norm_groups,
                        study.model.weights, study.model.whitening_group_size).to(device)
    model = prepare_model(model, fast)
    net: torch.nn.Module = model
    if d.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    stepper = Stepper(net, optimizer, task.loss, fast)

    lengths = [len(v) for v in train_videos]
    rng = np.random.default_rng([p.seed, 7])
    sampler = (CarriedSampler(lengths, p.seq_len, p.videos_per_batch, rng) if p.carry_hidden
               else SequenceSampler(lengths, p.seq_len, p.videos_per_batch, rng))
    # Extra batches (PreciseBN, probes) come from their own RNG: the training draws stay the same.
    extra = SequenceSampler(lengths, p.seq_len, p.videos_per_batch,
                            np.random.default_rng([p.seed, 11]))
    aug_rng = torch.Generator().manual_seed(p.seed * 1000 + 13 + d.rank)

    def extra_batches(n: int) -> list[torch.Tensor]:
        return [make_batch(train_videos, d.share(extra.sample()), p.seq_len, device, task)[0]
                for _ in range(n)]

    if p.norm == "sync_batch" and d.world_size == 1:
        warnings.warn("norm 'sync_batch' with one worker is plain BatchNorm", stacklevel=2)
    precise_bn = precise_bn_batches(cfg) if batch_stat_layers(model) else 0
    metrics: dict = {}
    state: State | None = None
    history: list[dict] = []
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if "scaler" in resume:
            stepper.scaler.load_state_dict(resume["scaler"])
        sampler.load_state_dict(resume["sampler"])
        extra.load_state_dict(resume["extra_sampler"])
        torch.set_rng_state(resume["torch_rng"])
        ranks = resume["ranks"]
        if len(ranks) == d.world_size:  # per-rank parts only fit the same world size
            aug_rng.set_state(ranks[d.rank]["aug_rng"])
            hidden = ranks[d.rank]["hidden"]
            state = None if hidden is None else tuple(t.to(device) for t in hidden)
        history = list(resume["history"])
        metrics = dict(history[-1]) if history else {}
        first_epoch = resume["epoch"] + 1
    for epoch in range(first_epoch, study.budget.epochs + 1):
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # read once per epoch
        for _ in range(study.budget.steps_per_epoch):
            # same draw on every rank: each rank takes its share of the sequences (lanes)
            if p.carry_hidden:
                picks, reset = sampler.sample()
                state = _reset_lanes(state, np.asarray(d.share(list(reset))), device)
            else:
                picks, state = sampler.sample(), None
            x, labels = make_batch(train_videos, d.share(picks), p.seq_len, device, task)
            x = augment(x, study.augmentation, aug_rng)
            loss, new_state = stepper.step(x, labels, state)
            state = new_state if p.carry_hidden else None
            loss_sum += loss
        train_loss = loss_sum.item() / study.budget.steps_per_epoch
        train_s = time.perf_counter() - t0

        if precise_bn:
            update_bn_stats(model, extra_batches(precise_bn))
        shard = val_videos[d.rank::d.world_size]
        records, val_loss_sum, frames = _gather(*evaluate(model, shard, task, device, fast), d)
        gap = {}
        if study.evaluation.cheat_gap and epoch == study.budget.epochs:  # a diagnosis of the trained model
            seen = train_videos[:len(val_videos)][d.rank::d.world_size]
            for split, videos in (("val", shard), ("train", seen)):
                batch, running = cheat_gap_records(model, videos, task, p.seq_len, device, fast,
                                                   p.carry_hidden)
                gap.update(cheat_gap_metrics(task, _gather(batch, 0.0, 0, d)[0],
                                             _gather(running, 0.0, 0, d)[0], split))
        if d.world_size > 1:
            t = torch.tensor([train_loss], dtype=torch.float64, device=device)  # NCCL: on GPU
            dist.all_reduce(t)
            train_loss = t.item() / d.world_size
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss_sum / max(frames, 1),
            **task.summarize(records),
            **gap,
            "train_frames_per_s": study.budget.steps_per_epoch * p.videos_per_batch * p.seq_len / train_s,
            "epoch_s": time.perf_counter() - t0,
            "world_size": d.world_size,
        }
        if epoch == study.budget.epochs and study.evaluation.probes:
            metrics.update(_probe(model, val_videos, p.seq_len, device, task, extra_batches(4)))
        history.append(metrics)
        if not snapshot:
            report(metrics)
            continue
        ranks = _rank_state(d, aug_rng, state if p.carry_hidden else None)
        report(metrics, {
            "epoch": epoch, "history": list(history), "ranks": ranks,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": stepper.scaler.state_dict(),
            "sampler": sampler.state_dict(), "extra_sampler": extra.state_dict(),
            "torch_rng": torch.get_rng_state(),
        })
    return metrics

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
import torch.nn.functional as F

from pitfalls.config import TrialConfig
from pitfalls.data.sampler import SequenceSampler
from pitfalls.data.synthetic import Video, make_videos
from pitfalls.models.precise_bn import batch_stat_layers, update_bn_stats
from pitfalls.models.video_model import VideoModel, build_model
from pitfalls.train.metrics import summarize, video_scores

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


def to_input(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1] on `device`."""
    x = torch.from_numpy(frames).to(device, non_blocking=True)
    return x.movedim(-1, -3).float().div_(127.5).sub_(1.0)


def make_batch(videos: list[Video], picks: list[tuple[int, int]], seq_len: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    frames = np.stack([videos[v].frames[s:s + seq_len] for v, s in picks])
    labels = np.stack([videos[v].phases[s:s + seq_len] for v, s in picks])
    return to_input(frames, device), torch.from_numpy(labels).to(device)


@torch.no_grad()
def evaluate(model: VideoModel, videos: list[Video], num_classes: int,
             device: torch.device) -> tuple[list[tuple[float, float]], float, int]:
    """Online evaluation of whole videos: per-video (acc, F1), summed CE loss, frame count."""
    model.eval()
    scores, loss_sum, frames = [], 0.0, 0
    for video in videos:
        state, preds = None, []
        for start in range(0, len(video), EVAL_CHUNK):
            x = to_input(video.frames[None, start:start + EVAL_CHUNK], device)
            y = torch.from_numpy(video.phases[start:start + EVAL_CHUNK]).to(device)
            logits, state = model(x, state)
            loss_sum += F.cross_entropy(logits[0], y, reduction="sum").item()
            preds.append(logits[0].argmax(-1).cpu().numpy())
        scores.append(video_scores(np.concatenate(preds), video.phases, num_classes))
        frames += len(video)
    return scores, loss_sum, frames


def _gather(scores: list, loss_sum: float, frames: int, d: Distributed):
    if d.world_size == 1:
        return scores, loss_sum, frames
    parts: list = [None] * d.world_size
    dist.all_gather_object(parts, (scores, loss_sum, frames))
    return ([s for p in parts for s in p[0]], sum(p[1] for p in parts), sum(p[2] for p in parts))


def _probe(model: VideoModel, val_videos: list[Video], seq_len: int, device: torch.device,
           train_batches: list[torch.Tensor]) -> dict:
    """Pitfall probes on the trained model, on the first `seq_len` frames of two val videos."""
    from pitfalls.probes.summary import probe_model

    picks = [(i % len(val_videos), 0) for i in range(2)]
    length = min(seq_len, *(len(v) for v in val_videos))
    clip, labels = make_batch(val_videos, picks, max(length, 2), device)
    return probe_model(model, clip, labels, train_batches)


def train(cfg: TrialConfig, report: Report = lambda m: None,
          device: torch.device | None = None) -> dict:
    """Train one trial; return the last epoch's metrics."""
    d = Distributed.current()
    p, study = cfg.params, cfg.study
    device = device or torch.device("cpu")
    torch.manual_seed(p.seed)  # same init on every rank; DDP also broadcasts rank 0's weights

    opts = study.dataset.options
    train_videos, val_videos = make_videos(opts)
    model = build_model(study.model.backbone, p.norm, p.frozen_stages, opts.num_phases,
                        study.model.hidden_size, study.model.group_norm_groups,
                        study.model.weights, study.model.whitening_group_size).to(device)
    net: torch.nn.Module = model
    if d.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)

    per_rank = p.videos_per_batch // d.world_size
    sampler = SequenceSampler([len(v) for v in train_videos], p.seq_len, p.videos_per_batch,
                              np.random.default_rng([p.seed, 7]))
    # Extra batches (PreciseBN, probes) come from their own RNG: the training draws stay the same.
    extra = SequenceSampler(sampler.lengths, p.seq_len, p.videos_per_batch,
                            np.random.default_rng([p.seed, 11]))

    def extra_batches(n: int) -> list[torch.Tensor]:
        return [make_batch(train_videos, extra.sample()[d.rank * per_rank:(d.rank + 1) * per_rank],
                           p.seq_len, device)[0] for _ in range(n)]

    if p.norm == "sync_batch" and d.world_size == 1:
        warnings.warn("norm 'sync_batch' with one worker is plain BatchNorm", stacklevel=2)
    precise_bn = study.evaluation.precise_bn_batches if batch_stat_layers(model) else 0
    metrics: dict = {}
    for epoch in range(1, study.budget.epochs + 1):
        net.train()
        t0, losses = time.perf_counter(), []
        for _ in range(study.budget.steps_per_epoch):
            picks = sampler.sample()  # same draw on every rank: the rank takes its share
            x, y = make_batch(train_videos, picks[d.rank * per_rank:(d.rank + 1) * per_rank],
                              p.seq_len, device)
            logits, _ = net(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        train_s = time.perf_counter() - t0

        if precise_bn:
            update_bn_stats(model, extra_batches(precise_bn))
        shard = val_videos[d.rank::d.world_size]
        scores, loss_sum, frames = _gather(*evaluate(model, shard, opts.num_phases, device), d)
        train_loss = float(np.mean(losses))
        if d.world_size > 1:
            t = torch.tensor([train_loss], dtype=torch.float64, device=device)  # NCCL: on GPU
            dist.all_reduce(t)
            train_loss = t.item() / d.world_size
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": loss_sum / max(frames, 1),
            **summarize(scores),
            "train_frames_per_s": study.budget.steps_per_epoch * p.videos_per_batch * p.seq_len / train_s,
            "epoch_s": time.perf_counter() - t0,
            "world_size": d.world_size,
        }
        if epoch == study.budget.epochs and study.evaluation.probes:
            metrics.update(_probe(model, val_videos, p.seq_len, device, extra_batches(4)))
        report(metrics)
    return metrics

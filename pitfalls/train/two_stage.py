"""Stage 2 of a two-stage trial: the temporal head trained on the frozen CNN's stored features.

Stage 1 (`pitfalls.train.loop`, as `frame_only`) leaves the CNN chosen on validation. Here its
features of every frame of every split are extracted once (eval mode: running statistics, the
trial's fast path), kept in the study's storage (`pitfalls.train.features`), and the study's
temporal head is trained on whole-video feature sequences: `videos_per_batch` distinct training
videos per step, each taken whole from its first frame (the head starts with no state), the
loss averaged over the videos. Validation and the final test evaluation run the head over each
video's features in one pass; the selection (`evaluation.select`) picks among stage 2's epochs.

The checkpoint of a stage-2 epoch (`STAGE: 2`) holds the whole model (frozen CNN + head), the
head's optimizer, the video sampler and the RNG, so a trial killed anywhere in stage 2, or
between the stages, continues bit for bit; the features are read back when their CNN's
fingerprint matches, else extracted again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from pitfalls.data.base import Video
from pitfalls.data.sampler import FrameSampler, VideoSampler
from pitfalls.models.backbone import feature_dim
from pitfalls.models.inputs import to_input
from pitfalls.models.temporal import training_loss
from pitfalls.models.video_model import chunk_bounds
from pitfalls.train import checkpoint as ckpt
from pitfalls.train.cheat_gap import cheat_gap_metrics, cheat_gap_records
from pitfalls.train.fast import frames_layout
from pitfalls.train.features import FeatureStore, MemoryFeatures, fingerprint
from pitfalls.train.loop import Report, Run, _probe, restore, run_epochs, setup
from pitfalls.train.optim import make_optimizer
from pitfalls.train.predictions import write_predictions
from pitfalls.train.selection import Selection, selected_weights
from pitfalls.train.tasks import Task


@dataclass
class HeadRun:
    """Stage 2 set up: the composed model (stage 1's CNN, frozen, with the temporal head)."""

    run: Run  # stage 1's run: data, task, fast path, the model (its head replaced)
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: VideoSampler
    selection: Selection
    features: dict[str, list[torch.Tensor]]  # per split, per video: (T, F) on the device
    history: list[dict]
    first_epoch: int


@torch.no_grad()
def extract(model: torch.nn.Module, video: Video, device: torch.device, fast) -> np.ndarray:
    """(T, F) float32 features of every frame of `video` (the model in eval mode), as many
    frames per pass as the lane evaluation runs (`eval_videos` x `eval_chunk`)."""
    out = []
    for start, stop in chunk_bounds(len(video), fast.eval_videos * fast.eval_chunk):
        x = frames_layout(to_input(np.asarray(video.frames[start:stop]), device), fast)
        with fast.autocast():
            out.append(model.frame_features(x).float().cpu())
    return torch.cat(out).numpy()


def cnn_fingerprint(run: Run) -> str:
    """Names the CNN the features come from: every tensor outside the head, and how it runs."""
    tensors = [(n, t) for n, t in [*run.model.state_dict().items(), *run.model.named_buffers()]
               if not n.startswith("head.")]
    return fingerprint(tensors, repr(sorted(run.fast.as_params().items())))


def stored_features(run: Run, store: FeatureStore) -> tuple[dict[str, list[torch.Tensor]], float]:
    """Every split's features, read back or extracted (and stored); the seconds extraction took."""
    key = cnn_fingerprint(run)
    run.model.eval()
    out: dict[str, list[torch.Tensor]] = {}
    t0, extracted = time.perf_counter(), False
    for split, videos in run.data.splits.items():
        out[split] = []
        for video in videos:
            feats = store.load(key, split, video.id)
            if feats is None:
                feats = extract(run.model, video, run.device, run.fast)
                store.save(key, split, video.id, feats)
                extracted = True
            out[split].append(torch.from_numpy(feats).to(run.device))
    return out, (time.perf_counter() - t0) if extracted else 0.0


def _labels(task: Task, video: Video, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(y[None]).to(device) for y in task.labels(video))


def setup_head(run: Run, resume: dict | None) -> HeadRun:
    """Stage 2 from the end of stage 1 (`resume` None: its selected CNN) or from a stage-2
    checkpoint."""
    cfg, p = run.cfg, run.cfg.params
    if resume is None and run.selection.weights is not None:
        run.model.load_state_dict(run.selection.weights)  # the CNN chosen on validation
    torch.manual_seed(p.seed * 1000 + 2)
    head = cfg.study.model.head_options(p.temporal_head).build(
        feature_dim(run.model.backbone), run.task.outputs).to(run.device)
    run.model.head = head
    run.model.requires_grad_(False)
    head.requires_grad_(True)
    optimizer = make_optimizer(run.model, p.for_target("optimizer"))  # the head's parameters
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.fast.precision == "fp16")
    sampler = VideoSampler(len(run.data.train), p.videos_per_batch,
                           np.random.default_rng([p.seed, 19]))
    selection = Selection(cfg.study.metric.selection, cfg.study.metric.mode,
                          cfg.study.evaluation.select)
    # the probes' batches: seeded here, so a trial resumed in stage 2 draws the same ones
    run.extra = FrameSampler([len(v) for v in run.data.train], run.extra.frames,
                             np.random.default_rng([p.seed, 23]))
    history, first = list(run.history), run.epochs + 1
    if resume is not None:
        run.model.load_state_dict(resume[ckpt.MODEL])
        optimizer.load_state_dict(resume[ckpt.OPTIMIZER])
        if ckpt.SCALER in resume:
            scaler.load_state_dict(resume[ckpt.SCALER])
        sampler.load_state_dict(resume[ckpt.SAMPLER])
        run.extra.load_state_dict(resume[ckpt.EXTRA_SAMPLER])
        torch.set_rng_state(resume[ckpt.TORCH_RNG])
        selection.load_state_dict(resume[ckpt.SELECTION])
        history, first = ckpt.history_of(resume), ckpt.epoch_of(resume) + 1
    return HeadRun(run, head, optimizer, scaler, sampler, selection, {}, history, first)


def capture_head(h: HeadRun, epoch: int) -> dict:
    return ckpt.plain({
        ckpt.EPOCH: epoch, ckpt.STAGE: 2, ckpt.HISTORY: list(h.history), ckpt.RANKS: [{}],
        ckpt.MODEL: h.run.model.state_dict(), ckpt.OPTIMIZER: h.optimizer.state_dict(),
        ckpt.SCALER: h.scaler.state_dict(), ckpt.SAMPLER: h.sampler.state_dict(),
        ckpt.EXTRA_SAMPLER: h.run.extra.state_dict(), ckpt.TORCH_RNG: torch.get_rng_state(),
        ckpt.SELECTION: h.selection.state_dict(),
    })


def head_epoch(h: HeadRun, steps: int) -> tuple[float, int]:
    """`steps` optimizer steps of the head on whole training videos; mean loss, frames seen."""
    run, task = h.run, h.run.task
    h.head.train()
    total = torch.zeros((), dtype=torch.float64, device=run.device)
    frames = 0
    for _ in range(steps):
        picks = h.sampler.sample()
        h.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=run.device)
        for v in picks:
            feats = h.features["train"][v][None]
            labels = _labels(task, run.data.train[v], run.device)
            with run.fast.autocast():  # the head's training loss (a multi-stage head: its own)
                loss, _ = training_loss(h.head, feats, None,
                                        lambda out, ys=labels: run.stepper.loss_fn(out, ys))
            loss = loss / len(picks)
            h.scaler.scale(loss).backward()
            step_loss += loss.detach()
            frames += feats.shape[1]
        h.scaler.step(h.optimizer)
        h.scaler.update()
        total += step_loss
    return total.item() / steps, frames


@torch.no_grad()
def evaluate_features(h: HeadRun, split: str) -> tuple[list, float, int, list[np.ndarray]]:
    """Per-video records, summed loss, frames and outputs of the head over `split`'s features."""
    run, task = h.run, h.run.task
    h.head.eval()
    records, loss_sum, frames, outputs = [], 0.0, 0, []
    for video, feats in zip(run.data.splits.get(split, []), h.features.get(split, [])):
        with run.fast.autocast():
            out, _ = h.head(feats[None], None)
        out = out.float()
        loss_sum += task.loss(out, _labels(task, video, run.device)).item() * len(video)
        output = out[0].cpu().numpy()
        records.append(task.video_record(output, video))
        outputs.append(output)
        frames += len(video)
    return records, loss_sum, frames, outputs


def _final(h: HeadRun, predictions) -> dict:
    """The selected head on the test split once, and the val/test predictions."""
    run = h.run
    out: dict = {"selected_epoch": h.selection.epoch}
    with selected_weights(h.head, h.selection):
        for split in ("val", "test"):
            if not run.data.splits.get(split) or (split == "val" and predictions is None):
                continue
            records, loss_sum, frames, outputs = evaluate_features(h, split)
            if split == "test":
                out.update({"test_loss": loss_sum / max(frames, 1),
                            **run.task.summarize(records, "test_")})
            if predictions is not None:
                write_predictions(predictions, split, run.data, run.task, run.data.splits[split],
                                  outputs)
    return out


def train(cfg, report: Report, device: torch.device, *, resume: dict | None, snapshot: bool,
          on_setup, predictions, features: FeatureStore | None) -> dict:
    """A two-stage trial: stage 1 (the CNN frame-wise, `pitfalls.train.loop`), then stage 2,
    continuing from `resume` wherever it was taken (stage 1, between the stages, stage 2)."""
    run = setup(cfg, device, on_setup)
    if resume is not None and ckpt.stage_of(resume) == 2:
        return train_head(run, report, resume=resume, snapshot=snapshot, predictions=predictions,
                          features=features)
    if resume is not None:
        restore(run, resume)
    run_epochs(run, report, snapshot=snapshot, predictions=predictions)
    return train_head(run, report, resume=None, snapshot=snapshot, predictions=predictions,
                      features=features)


def train_head(run: Run, report: Report, *, resume: dict | None, snapshot: bool,
               predictions, features: FeatureStore | None) -> dict:
    """Stage 2 of a two-stage trial, after `run` (stage 1, finished or restored)."""
    cfg, study, p = run.cfg, run.cfg.study, run.cfg.params
    h = setup_head(run, resume)
    h.features, extract_s = stored_features(run, features or MemoryFeatures())
    steps = study.budget.stages(p.training)[1][1]
    metrics: dict = dict(h.history[-1]) if h.history else {}
    for epoch in range(h.first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, frames = head_epoch(h, steps)
        train_s = time.perf_counter() - t0
        records, loss_sum, val_frames, _ = evaluate_features(h, "val")
        metrics = {"epoch": epoch, "stage": 2, "train_loss": train_loss,
                   "val_loss": loss_sum / max(val_frames, 1), **run.task.summarize(records),
                   "train_frames_per_s": frames / train_s, "epoch_s": time.perf_counter() - t0,
                   "world_size": 1}
        if extract_s:
            metrics["feature_extraction_s"], extract_s = extract_s, 0.0
        if epoch == cfg.epochs:
            metrics.update(_diagnoses(h))
        h.selection.offer(epoch, metrics, h.head)
        if epoch == cfg.epochs:
            metrics.update(_final(h, predictions if study.evaluation.predictions else None))
        h.history.append(metrics)
        report(metrics, capture_head(h, epoch) if snapshot else None)
    return metrics


def _diagnoses(h: HeadRun) -> dict:
    """The study's end-of-training diagnoses on the composed model (CNN + head), raw frames."""
    run, study, p = h.run, h.run.cfg.study, h.run.cfg.params
    out: dict = {}
    if study.evaluation.cheat_gap:
        seen = run.data.train[:len(run.data.val)]
        for split, videos in (("val", run.data.val), ("train", seen)):
            batch, running = cheat_gap_records(run.model, videos, run.task, p.seq_len, run.device,
                                               run.fast, False)
            out.update(cheat_gap_metrics(run.task, batch, running, split))
    if study.evaluation.probes:
        out.update(_probe(run))
    run.model.eval()
    return out

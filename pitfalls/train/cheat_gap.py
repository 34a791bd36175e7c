"""Does a model "cheat" through batch statistics? (finding 2 of the papers)

In training, a batch holds `seq_len` consecutive frames of a video, so a BatchNorm layer in train
mode normalizes every frame with statistics that include the frames after it: an online model can
read the future from them. At test time BN uses its running statistics and that information is
gone. The cheat gap measures exactly this: videos are cut into training-length chunks (one video
per batch, as in training) and evaluated twice with the same weights,
- `*_err_batchstats`: normalization layers in train mode (each chunk's own statistics),
- `*_err_runningstats`: the same layers in eval mode (running statistics, as deployed),
and `*_cheat_gap` = runningstats − batchstats, on the validation videos (`val_`) and on as many
training videos (`train_`, the first ones: what the model learned to exploit in training). The
error is 1 − accuracy for phases and wMAE (minutes) for anticipation. Dropout and the LSTM stay
in eval mode in both passes and every buffer is restored afterwards, so only the normalization
statistics differ: a model without batch statistics (GroupNorm, LayerNorm, NF) has a gap of
exactly 0.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from pitfalls.config.metrics import METRICS, default_metric
from pitfalls.data.base import Video
from pitfalls.models.video_model import chunk_bounds, forward_video
from pitfalls.train.fast import FastPath, frames_layout
from pitfalls.train.tasks import Task

_STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.RNNBase)


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Normalization layers in train mode (batch statistics), everything else in eval mode;
    running statistics and every other buffer restored on exit."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, _STOCHASTIC) or type(m).__name__ == "DropPath":
            m.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])
        for m, mode in modes.items():
            m.training = mode


def task_error(task: Task, records: list) -> float:
    """The task's error: 1 - its main score where higher is better (phase: accuracy), else the
    score itself (anticipation: wMAE, minutes)."""
    metric = default_metric(task.name)
    value = task.summarize(records)[metric]
    return 1.0 - value if METRICS[metric].mode == "max" else value


@torch.no_grad()
def chunked_records(model: nn.Module, videos: list[Video], task: Task, seq_len: int,
                    device: torch.device, fast: FastPath, carry_hidden: bool) -> list:
    """Per-video records of the model's outputs on consecutive `seq_len`-frame chunks, one video
    per forward pass, the head's state reset per chunk unless the trial carries it (as in training)."""
    records = []
    for video in videos:
        outputs = [out[0].cpu().numpy() for _, _, out in forward_video(
            model, video.frames, chunks(len(video), seq_len), device, carry_state=carry_hidden,
            prepare=lambda x: frames_layout(x, fast), autocast=fast.autocast)]
        records.append(task.video_record(np.concatenate(outputs), video))
    return records


def chunks(frames: int, seq_len: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive training-length chunks (at least 2 frames: BN in train mode
    needs more than one value per channel)."""
    return chunk_bounds(frames, max(seq_len, 2), merge_single=True)


def cheat_gap_records(model: nn.Module, videos: list[Video], task: Task, seq_len: int,
                      device: torch.device, fast: FastPath, carry_hidden: bool) -> tuple[list, list]:
    """(records with batch statistics, records with running statistics) on this rank's videos."""
    model.eval()
    running = chunked_records(model, videos, task, seq_len, device, fast, carry_hidden)
    with batch_statistics(model):
        batch = chunked_records(model, videos, task, seq_len, device, fast, carry_hidden)
    return batch, running


def cheat_gap_metrics(task: Task, batch: list, running: list, split: str) -> dict[str, float]:
    err_batch, err_running = task_error(task, batch), task_error(task, running)
    return {f"{split}_err_batchstats": err_batch, f"{split}_err_runningstats": err_running,
            f"{split}_cheat_gap": err_running - err_batch}

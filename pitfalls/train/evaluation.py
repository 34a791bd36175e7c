"""Online evaluation of whole videos, in order, the head's state carried from chunk to chunk as
a deployed model would run them; and gathering per-video records across DDP ranks."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from pitfalls.config import PerformanceSpec
from pitfalls.data.base import Video
from pitfalls.models.video_model import VideoModel, chunk_bounds, forward_video
from pitfalls.train.fast import FastPath, frames_layout, resolve
from pitfalls.train.tasks import Task

EVAL_CHUNK = 64  # frames per forward pass in evaluation; the head's state is carried across chunks


@torch.no_grad()
def evaluate(model: VideoModel, videos: list[Video], task: Task, device: torch.device,
             fast: FastPath | None = None, outputs_of: list | None = None) -> tuple[list, float, int]:
    """Per-video records of `task`, the summed loss and the frame count over `videos`; with
    `outputs_of`, each video's (T, outputs) model output is appended to it (for predictions)."""
    model.eval()
    fast = fast or resolve(PerformanceSpec(), device)
    records, loss_sum, frames = [], 0.0, 0
    for video in videos:
        labels = task.labels(video)
        outputs = []
        for start, stop, out in forward_video(model, video.frames, chunk_bounds(len(video), EVAL_CHUNK), device,
                                              prepare=lambda x: frames_layout(x, fast),
                                              autocast=fast.autocast):
            y = [torch.from_numpy(lab[None, start:stop]).to(device) for lab in labels]
            loss_sum += task.loss(out, y).item() * (stop - start)
            outputs.append(out[0].cpu().numpy())
        output = np.concatenate(outputs)
        records.append(task.video_record(output, video))
        if outputs_of is not None:
            outputs_of.append(output)
        frames += len(video)
    return records, loss_sum, frames


def gather(records: list, loss_sum: float, frames: int, rank: int, world_size: int):
    """Every rank's (records, loss sum, frames) combined, on every rank."""
    if world_size == 1:
        return records, loss_sum, frames
    parts: list = [None] * world_size
    dist.all_gather_object(parts, (records, loss_sum, frames))
    return ([r for p in parts for r in p[0]], sum(p[1] for p in parts), sum(p[2] for p in parts))

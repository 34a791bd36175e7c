"""Online evaluation of whole videos, in order, the head's state carried from chunk to chunk as
a deployed model would run them; and gathering per-video records across DDP ranks.

Several videos run together as lanes of one batch (`performance.eval_videos`), each with its
own carried state and its own end: when a lane's video ends, the next video (longest first, so
that the lanes end close together) starts on it with a reset state. A pass is lanes x
`eval_chunk` frames, shorter only when every lane has fewer frames left (so a few shapes per
split, the same every epoch, for cuDNN autotuning and `torch.compile`); a lane with fewer
frames than the pass, or none, is zero-padded. Padding changes nothing: the heads are
causal and eval-mode norms are per frame, so a frame's output depends on its video's frames up
to it only (the leakage probe checks the heads). Outputs and the loss stay on the device until
a video ends; the host batches are built in the background (`pitfalls.train.prefetch`) when
the run prefetches.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pitfalls.config import PerformanceSpec
from pitfalls.data.base import Video
from pitfalls.models.video_model import VideoModel
from pitfalls.train.fast import FastPath, frames_layout, resolve
from pitfalls.train.prefetch import HostBatch, HostBuffers, feeder
from pitfalls.train.tasks import Task

Piece = tuple[int, int, int]  # (video index, start, stop) of one lane in one pass


@dataclass(frozen=True)
class LaneStep:
    """One pass: per lane its piece (None: idle) and whether it starts a video (state reset)."""

    pieces: tuple[Piece | None, ...]
    starts: tuple[bool, ...]

    @property
    def length(self) -> int:
        """Frames of this pass: its longest piece (a lane with fewer is zero-padded)."""
        return max(p[2] - p[1] for p in self.pieces if p is not None)


def lane_schedule(lengths: list[int], lanes: int, chunk: int) -> list[LaneStep]:
    """The passes that evaluate videos of `lengths` on min(lanes, videos) lanes in chunks of
    `chunk` frames: a lane takes the next video (longest first) when its video has ended."""
    queue = deque(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)))
    current: list[list[int] | None] = [None] * min(lanes, len(lengths))  # per lane [video, next]
    steps = []
    while True:
        pieces, starts = [], []
        for i, lane in enumerate(current):
            start = lane is None or lane[1] >= lengths[lane[0]]
            if start:
                lane = current[i] = [queue.popleft(), 0] if queue else None
            if lane is None:
                pieces.append(None)
                starts.append(False)
                continue
            video, a = lane
            b = min(a + chunk, lengths[video])
            pieces.append((video, a, b))
            starts.append(start)
            lane[1] = b
        if all(p is None for p in pieces):
            return steps
        steps.append(LaneStep(tuple(pieces), tuple(starts)))


def _host_batch(videos: list[Video], step: LaneStep) -> HostBatch:
    empty = np.zeros((0,), dtype=np.uint8)
    return HostBatch([np.asarray(videos[p[0]].frames[p[1]:p[2]]) if p else empty
                      for p in step.pieces], step.length)


@torch.no_grad()
def evaluate(model: VideoModel, videos: list[Video], task: Task, device: torch.device,
             fast: FastPath | None = None, outputs_of: list | None = None, *,
             lanes: int | None = None, chunk: int | None = None,
             buffers: HostBuffers | None = None) -> tuple[list, float, int]:
    """Per-video records of `task` (in the order of `videos`), the summed loss and the frame
    count over `videos`; with `outputs_of`, each video's (T, outputs) model output is appended
    to it (for predictions). `lanes` and `chunk` default to the fast path's `eval_videos` and
    `eval_chunk`; `buffers`: host buffers to reuse (a run's, kept across epochs)."""
    model.eval()
    fast = fast or resolve(PerformanceSpec(), device)
    lengths = [len(v) for v in videos]
    lanes, chunk = lanes or fast.eval_videos, chunk or fast.eval_chunk
    outputs: list[torch.Tensor | None] = [None] * len(videos)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pieces: dict[int, list[torch.Tensor]] = {}
    schedule = lane_schedule(lengths, lanes, chunk)
    state = None
    reset = model.head.lanes.reset
    with feeder(lambda step: _host_batch(videos, step), device, fast.prefetch, buffers) as feed:
        for (step, _), (x, _) in feed.batches((s, None) for s in schedule):
            if any(step.starts):
                state = reset(state, np.asarray(step.starts), device)
            with fast.autocast():
                out, state = model(frames_layout(x, fast), state)
            out = out.float()
            for lane, piece in enumerate(step.pieces):
                if piece is None:
                    continue
                video, a, b = piece
                pieces.setdefault(video, []).append(out[lane, :b - a])
                if b == lengths[video]:  # the video has ended: its loss, on the device
                    whole = torch.cat(pieces.pop(video))
                    labels = [torch.from_numpy(lab[None]).to(device) for lab in task.labels(videos[video])]
                    loss_sum += task.loss(whole[None], labels).double() * len(whole)
                    outputs[video] = whole
    records = []
    for video, output in zip(videos, outputs):
        host = output.cpu().numpy()
        records.append(task.video_record(host, video))
        if outputs_of is not None:
            outputs_of.append(host)
    return records, loss_sum.item(), sum(lengths)


def gather(records: list, loss_sum: float, frames: int, rank: int, world_size: int):
    """Every rank's (records, loss sum, frames) combined, on every rank."""
    if world_size == 1:
        return records, loss_sum, frames
    parts: list = [None] * world_size
    dist.all_gather_object(parts, (records, loss_sum, frames))
    return ([r for p in parts for r in p[0]], sum(p[1] for p in parts), sum(p[2] for p in parts))

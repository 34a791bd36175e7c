"""Which frames go into a training batch: the samplers behind the batch-diversity factors.

- `SequenceSampler` (shuffled windows): each batch holds `videos_per_batch` sequences of
  `seq_len` consecutive frames, each from a *distinct* video, at random offsets.
  `videos_per_batch = 1` is the BatchNorm worst case: every frame of the batch comes from one
  stretch of one video.
- `CarriedSampler` (carried state, truncated BPTT): `videos_per_batch` lanes, each walking its
  own video in consecutive chunks of `seq_len`; the training loop carries each lane's LSTM state
  (detached) from one chunk to the next and resets it where a lane starts a new video. Lanes
  always hold distinct videos.
- `FrameSampler` (frame_only, stage 1 of two_stage): single frames across all videos.
- `VideoSampler` (stage 2 of two_stage): whole videos, for a head on stored features.
Evaluation needs no sampler: whole videos in order, the state carried (see `train.loop`).
Every sampler draws from its own `numpy` Generator; `state_dict()` captures everything needed
to continue the exact same stream after a restart, in plain form (numbers, strings, lists and
dicts: the bit generator's state with its arrays as lists), so a checkpoint holding it loads with
`torch.load(weights_only=True)`; `load_state_dict()` sets it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def rng_state(rng: np.random.Generator) -> dict:
    """The state of `rng`'s bit generator in plain form: numpy arrays (MT19937's key, Philox's
    counter) as lists, numpy integers as Python ints; PCG64's, the default, is plain already."""
    def convert(x):
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, np.generic):
            return x.item()
        return x
    return convert(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    """Set `rng`'s bit generator to a state from `rng_state` (numpy takes the lists as arrays,
    and refuses a state of another bit generator)."""
    rng.bit_generator.state = state


def _eligible(lengths: list[int], seq_len: int, videos_per_batch: int) -> np.ndarray:
    eligible = [i for i, n in enumerate(lengths) if n >= seq_len]
    if len(eligible) < videos_per_batch:
        raise ValueError(
            f"seq_len={seq_len}, videos_per_batch={videos_per_batch}: only "
            f"{len(eligible)} videos have at least {seq_len} frames")
    return np.asarray(eligible)


@dataclass
class SequenceSampler:
    lengths: list[int]
    seq_len: int
    videos_per_batch: int
    rng: np.random.Generator

    def __post_init__(self) -> None:
        self._eligible = _eligible(self.lengths, self.seq_len, self.videos_per_batch)

    def sample(self) -> list[tuple[int, int]]:
        """One batch: a list of (video index, start frame), videos distinct."""
        videos = self.rng.choice(self._eligible, size=self.videos_per_batch, replace=False)
        return [(int(v), int(self.rng.integers(0, self.lengths[v] - self.seq_len + 1)))
                for v in videos]

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])


@dataclass
class CarriedSampler:
    """Lanes walking videos chunk by chunk. `sample()` -> (picks, reset): `reset[i]` is True
    where lane i starts a new video (its carried state must be zeroed before the chunk).

    Each walk starts at a random offset below `seq_len`, and the tail shorter than a chunk is
    skipped, so over many walks every frame is trained on. Videos are taken from a shuffled
    queue (every eligible video once before any repeats), skipping those active on another lane.
    """

    lengths: list[int]
    seq_len: int
    videos_per_batch: int
    rng: np.random.Generator
    _lanes: list[list[int]] = field(default_factory=list)  # per lane [video, next start]
    _queue: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._eligible = _eligible(self.lengths, self.seq_len, self.videos_per_batch)
        if not self._lanes:
            self._lanes = [[-1, 0] for _ in range(self.videos_per_batch)]

    def _next_video(self) -> int:
        active = {v for v, _ in self._lanes}
        for _ in range(2):
            for i, v in enumerate(self._queue):
                if v not in active:
                    return self._queue.pop(i)
            self._queue.extend(int(v) for v in self.rng.permutation(self._eligible))
        raise AssertionError("unreachable: more eligible videos than lanes")

    def sample(self) -> tuple[list[tuple[int, int]], np.ndarray]:
        picks, reset = [], np.zeros(self.videos_per_batch, dtype=bool)
        for i, lane in enumerate(self._lanes):
            video, start = lane
            if video < 0 or start + self.seq_len > self.lengths[video]:
                lane[0] = video = -1  # free this lane's video before choosing the next
                video = self._next_video()
                slack = self.lengths[video] - self.seq_len
                start = int(self.rng.integers(0, min(self.seq_len - 1, slack) + 1))
                reset[i] = True
            picks.append((video, start))
            lane[0], lane[1] = video, start + self.seq_len
        return picks, reset

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng), "lanes": [[int(v), int(s)] for v, s in self._lanes],
                "queue": [int(v) for v in self._queue]}

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])
        self._lanes = [[int(v), int(s)] for v, s in state["lanes"]]
        self._queue = [int(v) for v in state["queue"]]


@dataclass
class FrameSampler:
    """Single frames drawn across all training videos (`frame_only`, a two-stage trial's first
    stage): each batch holds `frames` distinct frames, uniform over every frame of every video,
    so BatchNorm sees diverse batches. Picks are (video, frame) with sequences of one frame."""

    lengths: list[int]
    frames: int
    rng: np.random.Generator

    def __post_init__(self) -> None:
        self._starts = np.cumsum([0, *self.lengths])
        if self.frames > self._starts[-1]:
            raise ValueError(f"{self.frames} frames per batch, but the training videos hold "
                             f"{self._starts[-1]}")

    def sample(self) -> list[tuple[int, int]]:
        flat = self.rng.choice(int(self._starts[-1]), size=self.frames, replace=False)
        videos = np.searchsorted(self._starts, flat, side="right") - 1
        return [(int(v), int(f - self._starts[v])) for v, f in zip(videos, flat)]

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])


@dataclass
class VideoSampler:
    """Whole videos (a two-stage trial's second stage): `videos_per_batch` distinct training
    videos per step, each taken whole."""

    num_videos: int
    videos_per_batch: int
    rng: np.random.Generator

    def sample(self) -> list[int]:
        return [int(v) for v in self.rng.choice(self.num_videos, size=self.videos_per_batch,
                                                 replace=False)]

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])

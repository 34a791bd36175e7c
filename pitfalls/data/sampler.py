"""Batches of consecutive-frame sequences with controlled batch diversity.

Each batch holds `videos_per_batch` sequences of `seq_len` consecutive frames, each from a
*distinct* video, at random offsets. `videos_per_batch = 1` is the BatchNorm worst case: every
frame in the batch comes from one stretch of one video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SequenceSampler:
    lengths: list[int]
    seq_len: int
    videos_per_batch: int
    rng: np.random.Generator

    def __post_init__(self) -> None:
        eligible = [i for i, n in enumerate(self.lengths) if n >= self.seq_len]
        if len(eligible) < self.videos_per_batch:
            raise ValueError(
                f"seq_len={self.seq_len}, videos_per_batch={self.videos_per_batch}: only "
                f"{len(eligible)} videos have at least {self.seq_len} frames")
        self._eligible = np.asarray(eligible)

    def sample(self) -> list[tuple[int, int]]:
        """One batch: a list of (video index, start frame), videos distinct."""
        videos = self.rng.choice(self._eligible, size=self.videos_per_batch, replace=False)
        return [(int(v), int(self.rng.integers(0, self.lengths[v] - self.seq_len + 1)))
                for v in videos]

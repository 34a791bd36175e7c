"""What a trial learns: per task, the labels of a video, the loss, and the evaluation metrics.

Two tasks share one training loop:
- `phase`: per-frame phase classification; cross-entropy; per-video macro accuracy (mean ± std
  over videos), precision, recall, F1, Jaccard; and the Cholec80 community's relaxed and strict
  scores, the pooled and balanced ones (`pitfalls.scoring.protocols`, the study's protocol).
- `anticipation` (Rivoir et al. 2020): per instrument, minutes until it next appears clipped at
  the horizon (regression, divided by the horizon) plus present / outside / inside horizon
  (classification); inMAE, outMAE, wMAE, eMAE in minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from pitfalls.data.base import Video
from pitfalls.scoring.protocols import evaluate_records
from pitfalls.scoring.protocols import video_record as scored_video
from pitfalls.train.anticipation import (
    anticipation_errors,
    anticipation_loss,
    anticipation_targets,
    merge_errors,
    predicted_minutes,
    summarize_anticipation,
)
from pitfalls.train.metrics import phase_scores, summarize_phase


class Task(Protocol):
    name: str
    outputs: int  # model outputs per frame

    def labels(self, video: Video) -> tuple[np.ndarray, ...]: ...
    def loss(self, output: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor: ...
    def video_record(self, output: np.ndarray, video: Video): ...
    def summarize(self, records: list, prefix: str = "val_") -> dict[str, float]: ...


@dataclass(frozen=True)
class PhaseTask:
    num_classes: int
    fps: float = 1.0  # frames per second: the relaxed boundary is 10 s of frames
    protocol: str = "matlab"
    name: str = "phase"

    @property
    def outputs(self) -> int:
        return self.num_classes

    def labels(self, video: Video) -> tuple[np.ndarray, ...]:
        return (video.phases,)

    def loss(self, output: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(output.flatten(0, -2), labels[0].flatten())

    def video_record(self, output: np.ndarray, video: Video) -> dict:
        pred = output.argmax(-1)
        return {"macro": phase_scores(pred, video.phases, self.num_classes),
                "scored": scored_video(video.phases, pred, self.num_classes, self.fps, self.protocol)}

    def summarize(self, records: list, prefix: str = "val_") -> dict[str, float]:
        scored = evaluate_records([r["scored"] for r in records], self.protocol).metrics()
        return {**summarize_phase([r["macro"] for r in records], prefix),
                **{prefix + k: v for k, v in scored.items()}}


@dataclass
class AnticipationTask:
    tool_index: tuple[int, ...]  # columns of Video.tools to anticipate
    horizon: float  # minutes
    fps: float
    name: str = "anticipation"
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def outputs(self) -> int:
        return 4 * len(self.tool_index)  # K regression outputs + K x 3 class logits

    def _targets(self, video: Video):
        if video.id not in self._cache:  # computed once per video, not per batch
            self._cache[video.id] = anticipation_targets(
                video.tools[:, list(self.tool_index)], self.horizon, self.fps)
        return self._cache[video.id]

    def labels(self, video: Video) -> tuple[np.ndarray, ...]:
        t = self._targets(video)
        return (t.regression, t.classes)

    def loss(self, output: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        return anticipation_loss(output, labels[0], labels[1])

    def video_record(self, output: np.ndarray, video: Video) -> dict:
        pred = predicted_minutes(torch.from_numpy(output), self.horizon).numpy()
        return anticipation_errors(pred, self._targets(video).minutes, self.horizon)

    def summarize(self, records: list, prefix: str = "val_") -> dict[str, float]:
        return summarize_anticipation(merge_errors(records), prefix)


def make_task(name: str, num_phases: int, tool_names: Sequence[str], tools: Sequence[str],
              horizon: float, fps: float, protocol: str = "matlab") -> Task:
    if name == "phase":
        return PhaseTask(num_phases, fps, protocol)
    return AnticipationTask(tuple(list(tool_names).index(t) for t in tools), horizon, fps)

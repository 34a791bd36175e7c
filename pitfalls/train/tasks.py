"""What a trial learns: per task, the labels of a video, the loss, and the evaluation metrics.

Two tasks share one training loop:
- `phase`: per-frame phase classification; cross-entropy; per-video macro accuracy (mean ± std
  over videos), precision, recall, F1, Jaccard; and the Cholec80 community's relaxed and strict
  scores, the pooled and balanced ones (`pitfalls.scoring.protocols`, the study's protocol).
- `anticipation` (Rivoir et al. 2020): per instrument, minutes until it next appears clipped at
  the horizon (regression, divided by the horizon) plus present / outside / inside horizon
  (classification); inMAE, outMAE, wMAE, eMAE in minutes.

`training_loss` is the loss the training steps minimize: the task's own, or for the phase task
with `class_weights: median_frequency` its cross-entropy weighted per phase. Evaluation always
uses the unweighted `Task.loss`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
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

    def loss(self, output: torch.Tensor, labels: Sequence[torch.Tensor],
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy over every frame; `weight`: per-phase weights (`training_loss`)."""
        return F.cross_entropy(output.flatten(0, -2), labels[0].flatten(), weight=weight)

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


LossFn = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


def median_frequency_weights(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015, as surgical-phase models train
    with): w_c = median_k(f_k) / f_c, f_c the fraction of the frames of `labels` (the training
    videos') labelled c, so a rare phase weighs more and the median phase weighs 1.

    A class absent from `labels` gets weight 0 and is left out of the median: no training frame
    carries it, so its weight never enters the training loss, and 0 (not inf, nor the largest
    weight) keeps the weights finite and says there is nothing to weigh."""
    counts = np.bincount(np.concatenate([np.asarray(y).ravel() for y in labels]),
                         minlength=num_classes).astype(np.float64)
    present = counts > 0
    freq = counts / counts.sum()
    weights = np.zeros(num_classes)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


# Per level of the trial parameter `class_weights` other than `none` (tests check the levels).
CLASS_WEIGHTINGS: dict[str, Callable[[Sequence[np.ndarray], int], np.ndarray]] = {
    "median_frequency": median_frequency_weights}


def training_loss(task: Task, class_weights: str, train: Sequence[Video],
                  device: torch.device) -> LossFn:
    """The loss the training steps minimize: `task.loss`, or with `class_weights` other than
    `none` the phase cross-entropy weighted per phase, the weights computed once from the
    training videos' labels.

    val_loss and test_loss stay the unweighted `task.loss`: an arm's weights come from its own
    weighting (and split), so a weighted validation loss would not compare across arms or
    studies; the weighting shows in the phase metrics instead. Anticipation takes no class
    weights (validation refuses them): its three classes are set by the horizon, not by the
    surgery, and its loss also regresses minutes, which no class weighting balances."""
    if class_weights == "none":
        return task.loss
    if not isinstance(task, PhaseTask):
        raise ValueError(f"class_weights: {class_weights!r} applies to task phase only")
    weights = CLASS_WEIGHTINGS[class_weights]([v.phases for v in train], task.num_classes)
    return functools.partial(task.loss, weight=torch.as_tensor(weights, dtype=torch.float32,
                                                                device=device))

"""Phase-recognition metrics, computed per video and then averaged over videos.

Definitions (the common Cholec80 evaluation, without the relaxed-boundary variant):

* accuracy: the fraction of a video's frames whose predicted phase is the true phase. Reported as
  mean and sample standard deviation (ddof=1) over videos, as the Cholec80 papers report it.
* per video and per phase c *that occurs in that video's ground truth*, with tp/fp/fn counted over
  the video's frames:
  P = tp / (tp + fp), 0 if c is never predicted;  R = tp / (tp + fn);
  J = tp / (tp + fp + fn);  F1 = 2PR / (P + R), 0 if P + R = 0.
  The video's macro P/R/F1/J = the mean over those phases.
* reported precision/recall/F1/Jaccard = the mean over videos of the per-video macro values.

A phase absent from a video's ground truth is not counted for that video, so predicting it has no
score of its own there: it only lowers accuracy and the recall (and Jaccard) of the true phase.
Note that F1 here is the harmonic mean of the per-phase P and R, which equals 2tp/(2tp+fp+fn)
whenever tp > 0.

Per-video results are plain dicts of floats so they can cross DDP ranks via all_gather_object.
"""

from __future__ import annotations

import numpy as np

from pitfalls.config.metrics import names
from pitfalls.scoring.protocols import METRICS as SCORED

# accuracy, precision, recall, f1, jaccard: the registry's phase scores computed here (the others
# are the scoring protocols')
PHASE_METRICS = tuple(n for n in names("phase") if n not in {d.name for d in SCORED})


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = true phase, columns = predicted phase."""
    pred = np.asarray(pred, dtype=np.int64).ravel()
    target = np.asarray(target, dtype=np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} frames, target {target.size}")
    for name, a in (("pred", pred), ("target", target)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def phase_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """One video's accuracy and macro precision/recall/F1/Jaccard over its true phases."""
    cm = confusion(pred, target, num_classes)
    total = cm.sum()
    if total == 0:
        raise ValueError("cannot score an empty video")
    tp = np.diag(cm).astype(np.float64)
    true_count = cm.sum(axis=1).astype(np.float64)  # tp + fn
    pred_count = cm.sum(axis=0).astype(np.float64)  # tp + fp
    present = true_count > 0
    tp, true_count, pred_count = tp[present], true_count[present], pred_count[present]
    precision = np.divide(tp, pred_count, out=np.zeros_like(tp), where=pred_count > 0)
    recall = tp / true_count
    jaccard = tp / (true_count + pred_count - tp)  # tp + fn + fp; > 0 because the phase is present
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
    return {
        "accuracy": float(tp.sum() / total),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "jaccard": float(jaccard.mean()),
    }


def summarize_phase(per_video: list[dict[str, float]], prefix: str = "val_") -> dict[str, float]:
    """Mean over videos of each metric, plus the sample std over videos of accuracy."""
    if not per_video:
        raise ValueError("no videos to summarize")
    out = {}
    for name in PHASE_METRICS:
        values = np.array([v[name] for v in per_video], dtype=np.float64)
        out[prefix + name] = float(values.mean())
        if name == "accuracy":
            out[prefix + "accuracy_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out

"""Phase-recognition metrics, computed per video and then averaged over videos.

Video-wise accuracy is the mean over videos of each video's frame accuracy (the papers report
mean ± std over videos). Macro F1 is computed per video over the phases that occur in that
video's labels or predictions, then averaged over videos.
"""

from __future__ import annotations

import numpy as np


def video_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(accuracy, macro F1) of one video's per-frame predictions."""
    acc = float((pred == target).mean())
    f1s = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        if tp + fp + fn == 0:
            continue  # phase absent from both: undefined, not counted
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return acc, float(np.mean(f1s)) if f1s else 0.0


def summarize(per_video: list[tuple[float, float]]) -> dict[str, float]:
    arr = np.asarray(per_video, dtype=np.float64).reshape(-1, 2)
    return {
        "val_accuracy": float(arr[:, 0].mean()),
        "val_accuracy_std": float(arr[:, 0].std(ddof=1)) if len(arr) > 1 else 0.0,
        "val_f1": float(arr[:, 1].mean()),
    }

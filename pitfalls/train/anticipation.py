"""Instrument anticipation (Rivoir et al. 2020): targets, loss and metrics.

Targets. Per frame and instrument, t = the time in minutes until the instrument next appears
(0 while it is present; infinite if it never appears again), with frames at `fps` frames per
second, so t = frames_until_next / fps / 60. The clipped time is y = min(t, h) for the horizon
h (minutes); the regression target is y / h in [0, 1]; the class target is 0 = present (t = 0),
1 = outside the horizon (t >= h, "never again" included), 2 = inside the horizon (0 < t < h).

Metrics (minutes, per instrument; y = true clipped time, ŷ = prediction clipped to [0, h]):
inMAE over frames with 0 < y < h, outMAE over frames with y = h, wMAE = (inMAE + outMAE) / 2,
eMAE over frames with 0 < y < 0.1 h. "y = h" is tested as y >= h (1 - 1e-6) so that times
stored in float32 still match a float64 horizon.

Aggregation. Absolute errors are pooled over all frames of all evaluated videos per instrument:
`anticipation_errors` returns per-instrument sums and counts for one video, which add up across
videos and DDP ranks (`merge_errors`). Per instrument, MAE = sum / count, and its wMAE = the mean
of its inMAE and outMAE. Each reported value is the mean over the instruments that have at least
one frame in the range (for wMAE: at least one in-horizon and one out-of-horizon frame); when no
instrument has such frames the value is NaN.

Loss. The model emits K*4 channels: channels [0, K) are the regression outputs, channels
[K, 4K) are the class logits laid out instrument-major, i.e. reshaped to (K, 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUM_ANTICIPATION_CLASSES = 3
PRESENT, OUTSIDE, INSIDE = 0, 1, 2
ERROR_RANGES = ("in", "out", "e")
_OUT_TOLERANCE = 1e-6  # relative; y counts as "= h" from h (1 - tol) on (float32 storage)


@dataclass(frozen=True)
class AnticipationTargets:
    """Per-frame targets of one video, each (T, K)."""

    minutes: np.ndarray  # float32, time to next occurrence clipped to the horizon
    regression: np.ndarray  # float32 in [0, 1], minutes / horizon
    classes: np.ndarray  # int64: PRESENT, OUTSIDE or INSIDE


def frames_until_next(tools: np.ndarray) -> np.ndarray:
    """(T, K) float64 frames until each instrument is next present (0 if present, inf if never).

    A reverse running minimum over the index of each presence, so O(T K) without Python loops.
    """
    tools = np.asarray(tools)
    if tools.ndim != 2:
        raise ValueError(f"tools must be (T, K), got shape {tools.shape}")
    frame = np.arange(tools.shape[0], dtype=np.float64)[:, None]
    occurrence = np.where(tools > 0, frame, np.inf)
    next_occurrence = np.minimum.accumulate(occurrence[::-1], axis=0)[::-1]
    return next_occurrence - frame


def anticipation_targets(tools: np.ndarray, horizon: float, fps: float = 1.0) -> AnticipationTargets:
    """Time-to-next-occurrence targets for one video from its (T, K) 0/1 tool presence."""
    if horizon <= 0 or fps <= 0:
        raise ValueError(f"horizon and fps must be positive, got {horizon}, {fps}")
    minutes = frames_until_next(tools) / fps / 60.0
    outside = minutes >= horizon * (1 - _OUT_TOLERANCE)  # same test as the metrics' "y = h"
    classes = np.full(minutes.shape, INSIDE, dtype=np.int64)
    classes[outside] = OUTSIDE
    classes[minutes == 0] = PRESENT
    clipped = np.where(outside, horizon, minutes)
    return AnticipationTargets(
        minutes=clipped.astype(np.float32),
        regression=(clipped / horizon).astype(np.float32),
        classes=classes,
    )


def _range_masks(y: np.ndarray, horizon: float) -> dict[str, np.ndarray]:
    out = y >= horizon * (1 - _OUT_TOLERANCE)
    return {"in": (y > 0) & ~out, "out": out, "e": (y > 0) & (y < 0.1 * horizon)}


def anticipation_errors(pred_minutes: np.ndarray, true_minutes: np.ndarray, horizon: float) -> dict:
    """One video's per-instrument absolute-error sums and frame counts in each range.

    Returns {"in_sum", "in_count", "out_sum", "out_count", "e_sum", "e_count"}: lists of length K
    (floats for sums, ints for counts), plain Python so they pickle and add across ranks.
    """
    pred = np.asarray(pred_minutes, dtype=np.float64)
    true = np.asarray(true_minutes, dtype=np.float64)
    if pred.shape != true.shape or true.ndim != 2:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must both be (T, K)")
    y = np.clip(true, 0.0, horizon)
    err = np.abs(np.clip(pred, 0.0, horizon) - y)
    out: dict = {}
    for name, mask in _range_masks(y, horizon).items():
        out[f"{name}_sum"] = [float(s) for s in np.where(mask, err, 0.0).sum(axis=0)]
        out[f"{name}_count"] = [int(c) for c in mask.sum(axis=0)]
    return out


def merge_errors(parts: list[dict]) -> dict:
    """Element-wise sum of `anticipation_errors` results (over videos and ranks)."""
    if not parts:
        raise ValueError("no error parts to merge")
    merged = {}
    for key in parts[0]:
        totals = np.sum([np.asarray(p[key]) for p in parts], axis=0)
        cast = int if key.endswith("_count") else float
        merged[key] = [cast(v) for v in totals]
    return merged


def _mae_per_instrument(errors: dict, name: str) -> np.ndarray:
    """(K,) MAE in minutes per instrument; NaN where the instrument has no frame in the range."""
    sums = np.asarray(errors[f"{name}_sum"], dtype=np.float64)
    counts = np.asarray(errors[f"{name}_count"], dtype=np.float64)
    return np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)


def _mean_defined(values: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without a warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def summarize_anticipation(errors: dict, prefix: str = "val_") -> dict[str, float]:
    """wMAE, inMAE, outMAE and eMAE in minutes, each a mean over instruments with frames."""
    mae = {name: _mae_per_instrument(errors, name) for name in ERROR_RANGES}
    wmae = (mae["in"] + mae["out"]) / 2  # NaN unless the instrument has both in and out frames
    return {
        prefix + "wMAE": _mean_defined(wmae),
        prefix + "inMAE": _mean_defined(mae["in"]),
        prefix + "outMAE": _mean_defined(mae["out"]),
        prefix + "eMAE": _mean_defined(mae["e"]),
    }


def split_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 4K) model output -> regression (..., K) and class logits (..., K, 3)."""
    channels = output.shape[-1]
    if channels % (1 + NUM_ANTICIPATION_CLASSES):
        raise ValueError(f"output has {channels} channels, not a multiple of 4")
    k = channels // (1 + NUM_ANTICIPATION_CLASSES)
    logits = output[..., k:].reshape(*output.shape[:-1], k, NUM_ANTICIPATION_CLASSES)
    return output[..., :k], logits


def predicted_minutes(output: torch.Tensor, horizon: float) -> torch.Tensor:
    """(..., K) predicted minutes: the regression output clamped to [0, 1], times the horizon."""
    return split_output(output)[0].clamp(0.0, 1.0) * horizon


def anticipation_loss(output: torch.Tensor, regression: torch.Tensor,
                      classes: torch.Tensor) -> torch.Tensor:
    """Mean L1 on the regression outputs plus mean cross-entropy on the class logits.

    L1 rather than smooth L1: the targets lie in [0, 1], where smooth L1 with its default beta = 1
    is just half the squared error, while the reported metric is the MAE. The regression output
    is not clamped here, so out-of-range predictions still get a gradient.
    Both terms are averaged over every frame and instrument, then added.
    """
    reg, logits = split_output(output)
    l1 = F.l1_loss(reg, regression.to(reg.dtype))
    ce = F.cross_entropy(logits.reshape(-1, NUM_ANTICIPATION_CLASSES), classes.reshape(-1).long())
    return l1 + ce

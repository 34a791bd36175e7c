"""The community's phase-recognition metrics, and the variants other code reports.

The M2CAI16/Cholec80 evaluation (`Main.m`, `Evaluate.m`, `ReadPhaseLabel.m`; docs/evaluation.md)
scores each video with *relaxed boundaries*: within 10 s after a phase starts, predicting the
previous phase is not an error (late transition), and within 10 s before it ends predicting the
next one is not (early transition); GallbladderDissection/Packaging (phases 4/5) also accept a
jump to 6/7 at their end, CleaningCoagulation/GallbladderRetraction (6/7) accept 4/5 at their
start. Per video: accuracy, and per phase present in the video's ground truth the Jaccard index,
precision and recall (NaN for an absent phase). Accuracy is then the mean ± std over videos;
the others are clipped at 100, averaged per phase over videos, then mean ± std over phases.

Two protocols compute this:
- `matlab`: the scripts exactly, quirks included. The early-transition allowance is applied to
  the *first* frames of a phase (where the last frames hold the allowed labels) instead of the
  last ones; "true positives" of a phase count every correct-or-relaxed frame of the union of its
  predicted and true frames, so precision and recall can pass 100 (hence the clipping), and a
  phase never predicted scores precision 100 (or NaN); Jaccard and recall are averaged over
  phases with `mean` (NaN if any phase is absent from every video), precision with `nanmean`.
- `corrected`: the early allowance on the last frames; precision counts the correct-or-relaxed
  frames predicted as the phase, recall those truly of the phase (never above 100); a phase
  never predicted has precision 0; NaN-aware means throughout.
Both give `relaxed` scores (10 s) and `strict` ones (the same computation with no allowance).

Other variants, each under its own name: `pooled_*` (frames of all videos pooled, then macro over
the phases that occur in the truth or the predictions, as sklearn's `average="macro"` computes),
`balanced_accuracy` (pooled mean recall over the phases that occur), and the per-video macro
averages of `pitfalls.train.metrics` (`accuracy`, `precision`, ...). Phases are 0-based here; the
scripts' phase numbers are these plus one. A dataset with K phases is scored over its K phases
(the scripts loop over Cholec80's 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROTOCOLS = ("matlab", "corrected")
RELAXED_SECONDS = 10.0
KINDS = ("relaxed", "strict")
PER_PHASE = ("jaccard", "precision", "recall")  # per phase, then over phases
SCORES = ("accuracy", *PER_PHASE)  # per kind, in percent
# the per-phase table's columns: relaxed_jaccard, ..., strict_recall
PHASE_COLUMNS = tuple(f"{kind}_{s}" for kind in KINDS for s in PER_PHASE)


@dataclass(frozen=True)
class Declared:
    """A metric this module computes, as the metric registry declares it (`config.metrics`)."""

    name: str
    mode: str | None  # "max" | None (a spread: reported, never compared)
    doc: str


def _declare() -> tuple[Declared, ...]:
    out = []
    for kind in KINDS:
        how = "10 s relaxed boundaries" if kind == "relaxed" else "no boundary allowance"
        for s in SCORES:
            over = "over videos" if s == "accuracy" else "per phase over videos, then over phases"
            out.append(Declared(f"{kind}_{s}", "max", f"{s}, {how} (evaluation.protocol), percent; mean {over}"))
            out.append(Declared(f"{kind}_{s}_std", None, f"std of {kind}_{s} ({over.split(',')[-1].strip()})"))
    out += [
        Declared("pooled_accuracy", "max", "frames right over all videos pooled (fraction)"),
        Declared("pooled_precision", "max", "macro precision over pooled frames (sklearn's macro)"),
        Declared("pooled_recall", "max", "macro recall over pooled frames"),
        Declared("pooled_f1", "max", "macro F1 over pooled frames"),
        Declared("pooled_jaccard", "max", "macro Jaccard over pooled frames"),
        Declared("balanced_accuracy", "max", "mean recall over phases, pooled frames"),
    ]
    return tuple(out)


METRICS: tuple[Declared, ...] = _declare()


@dataclass(frozen=True)
class VideoScore:
    """One video's scores of one kind (relaxed or strict), percent; NaN for absent phases."""

    accuracy: float
    jaccard: np.ndarray  # (K,)
    precision: np.ndarray
    recall: np.ndarray


def _late_early(phase: int, num_phases: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The label differences (pred - true) forgiven at a phase's start (late) and end (early).
    `phase` is 1-based, as in the scripts; their special cases are Cholec80's phases 4-7."""
    if phase in (4, 5):
        return (-1,), (1, 2)
    if phase in (6, 7):
        return (-1, -2), (1, 2)
    return (-1,), (1,)


def _segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def relaxed_diff(gt: np.ndarray, pred: np.ndarray, num_phases: int, window: int,
                 protocol: str) -> np.ndarray:
    """pred - gt per frame, with the forgiven differences set to 0 (Evaluate.m's `updatedDiff`)."""
    diff = (pred - gt).astype(np.int64)
    out = diff.copy()
    for phase in range(1, num_phases + 1):
        late, early = _late_early(phase, num_phases)
        for start, stop in _segments(gt == phase - 1):
            cur = diff[start:stop].copy()
            t = min(window, stop - start)
            head = cur[:t]
            head[np.isin(head, late)] = 0
            tail_mask = np.isin(cur[len(cur) - t:], early)
            if protocol == "matlab":
                cur[:t][tail_mask] = 0  # the scripts' mask of the last t frames indexes the first t
            else:
                cur[len(cur) - t:][tail_mask] = 0
            out[start:stop] = cur
    return out


def score_video(gt: np.ndarray, pred: np.ndarray, num_phases: int, window: int,
                protocol: str) -> VideoScore:
    """One video: relaxed (window > 0 frames) or strict (window 0) scores, as `protocol` does."""
    gt, pred = np.asarray(gt, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if gt.shape != pred.shape or gt.ndim != 1 or not len(gt):
        raise ValueError(f"ground truth ({gt.shape}) and prediction ({pred.shape}) must be the same non-empty length")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    ok = relaxed_diff(gt, pred, num_phases, window, protocol) == 0
    jac, prec, rec = (np.full(num_phases, np.nan) for _ in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(num_phases):
            is_gt, is_pred = gt == c, pred == c
            if not is_gt.any():
                continue
            union = is_gt | is_pred
            tp = np.count_nonzero(ok & union)
            jac[c] = 100.0 * tp / np.count_nonzero(union)
            n_pred, n_gt = np.count_nonzero(is_pred), np.count_nonzero(is_gt)
            if protocol == "matlab":
                prec[c] = np.float64(tp) * 100 / n_pred  # inf (clipped to 100) or nan when never predicted
                rec[c] = tp * 100.0 / n_gt
            else:
                prec[c] = 100.0 * np.count_nonzero(ok & is_pred) / n_pred if n_pred else 0.0
                rec[c] = 100.0 * np.count_nonzero(ok & is_gt) / n_gt
    return VideoScore(100.0 * np.count_nonzero(ok) / len(gt), jac, prec, rec)


def _std(values: np.ndarray) -> float:
    """MATLAB's std (n - 1), which is 0 for one value; NaN-aware callers drop NaNs first."""
    if len(values) == 0:
        return float("nan")
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _nanmean(values: np.ndarray, axis=None):
    ok = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, values, 0).sum(axis=axis) / ok.sum(axis=axis)


def _nanstd(values: np.ndarray) -> float:
    return _std(values[~np.isnan(values)])


@dataclass(frozen=True)
class Summary:
    """Scores over videos of one kind: {score: (mean, std)} and per phase {score: (K,) means}."""

    summary: dict[str, tuple[float, float]]
    per_phase: dict[str, np.ndarray]
    per_phase_std: dict[str, np.ndarray]


def summarize(scores: Sequence[VideoScore], protocol: str) -> Summary:
    """Main.m's aggregation (`matlab`) or its NaN-aware version (`corrected`)."""
    if not scores:
        raise ValueError("no videos to summarize")
    acc = np.array([s.accuracy for s in scores])
    out = {"accuracy": (float(acc.mean()), _std(acc))}
    per_phase, per_phase_std = {}, {}
    for name in PER_PHASE:
        m = np.stack([getattr(s, name) for s in scores], axis=1)  # (K, videos)
        m = np.where(m > 100, 100.0, m)  # inf included; NaN stays NaN
        phase_mean = _nanmean(m, axis=1)
        per_phase[name] = phase_mean
        per_phase_std[name] = np.array([_nanstd(row) for row in m])
        if protocol == "matlab" and name != "precision":  # mean/std: NaN if any phase is NaN
            out[name] = (float(phase_mean.mean()), _std(phase_mean) if not np.isnan(phase_mean).any() else float("nan"))
        else:
            out[name] = (float(_nanmean(phase_mean)), _nanstd(phase_mean))
    return Summary(out, per_phase, per_phase_std)


def pooled(confusion: np.ndarray) -> dict[str, float]:
    """Frame-pooled metrics from a (K, K) confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp, true, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    occurs = (true + predicted) > 0  # sklearn's labels: in the truth or the predictions
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(predicted > 0, tp / predicted, 0.0)[occurs]
        r = np.where(true > 0, tp / true, 0.0)[occurs]
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        j = (tp / (true + predicted - tp))[occurs]
    return {
        "pooled_accuracy": float(tp.sum() / cm.sum()),
        "pooled_precision": float(p.mean()), "pooled_recall": float(r.mean()),
        "pooled_f1": float(f1.mean()), "pooled_jaccard": float(j.mean()),
        "balanced_accuracy": float((tp / np.where(true > 0, true, 1))[true > 0].mean()),
    }


def window_frames(fps: float) -> int:
    """The relaxed boundary in frames: 10 s at the frames' rate (`oriT = 10 * fps`)."""
    return int(np.floor(RELAXED_SECONDS * fps + 1e-9))


@dataclass(frozen=True)
class Evaluation:
    """Every video of a split scored: relaxed and strict summaries, pooled metrics."""

    protocol: str
    kinds: dict[str, Summary]
    pooled: dict[str, float]
    videos: int

    def metrics(self) -> dict[str, float]:
        """The registry's names (`METRICS`), without a split prefix."""
        out: dict[str, float] = {}
        for kind, s in self.kinds.items():
            for score, (mean, std) in s.summary.items():
                out[f"{kind}_{score}"], out[f"{kind}_{score}_std"] = mean, std
        return {**out, **self.pooled}

    def as_json(self, phase_names: Sequence[str]) -> dict:
        """{kind: {score: {mean, std}, per_phase: {phase: {score: {mean, std}}}}}, percent."""
        out: dict = {}
        for kind, s in self.kinds.items():
            entry: dict = {k: {"mean": _num(m), "std": _num(sd)} for k, (m, sd) in s.summary.items()}
            entry["per_phase"] = {
                name: {k: {"mean": _num(s.per_phase[k][i]), "std": _num(s.per_phase_std[k][i])}
                       for k in s.per_phase} for i, name in enumerate(phase_names)}
            out[kind] = entry
        return {"protocol": self.protocol, "videos": self.videos, **out, "pooled": self.pooled}


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def video_record(gt: np.ndarray, pred: np.ndarray, num_phases: int, fps: float, protocol: str) -> dict:
    """What one video contributes to `evaluate_records` (plain data: crosses DDP ranks)."""
    gt, pred = np.asarray(gt, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    cm = np.bincount(gt * num_phases + pred, minlength=num_phases ** 2).reshape(num_phases, num_phases)
    return {"relaxed": score_video(gt, pred, num_phases, window_frames(fps), protocol),
            "strict": score_video(gt, pred, num_phases, 0, protocol), "confusion": cm}


def evaluate_records(records: Sequence[dict], protocol: str) -> Evaluation:
    kinds = {k: summarize([r[k] for r in records], protocol) for k in KINDS}
    cm = np.sum([r["confusion"] for r in records], axis=0)
    return Evaluation(protocol, kinds, pooled(cm), len(records))


def evaluate_videos(pairs: Sequence[tuple[np.ndarray, np.ndarray]], num_phases: int, fps: float,
                    protocol: str) -> Evaluation:
    """Score (truth, prediction) pairs of per-frame 0-based phases at `fps` frames per second."""
    return evaluate_records([video_record(g, p, num_phases, fps, protocol) for g, p in pairs], protocol)

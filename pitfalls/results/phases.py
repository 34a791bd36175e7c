"""Per-phase scores and phase ribbons of a study's arms, from the trials' prediction files.

A trial writes its selected checkpoint's per-frame predictions (`predictions/<trial>/<split>/
probabilities.parquet`, `pitfalls.train.predictions`); the report scores the best arm's test
(else validation) predictions per phase with the protocol the trials used, and the HTML report
draws ground truth against prediction for a few videos of the best and the worst arm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pitfalls.scoring.protocols import KINDS, PER_PHASE, evaluate_videos

PREDICTIONS_DIR = "predictions"  # <study>/predictions/<trial id>/<split>/
PROBABILITIES = "probabilities.parquet"
SPLITS = ("test", "val")  # the first whose predictions exist


def _path(root: Path, trial_id: str, split: str) -> Path:
    return Path(root) / trial_id / split / PROBABILITIES


def read_predictions(root: Path, trial_id: str, split: str) -> pa.Table | None:
    path = _path(root, trial_id, split)
    return pq.read_table(path) if path.is_file() else None


def phase_names(table: pa.Table) -> list[str]:
    return [c[2:] for c in table.column_names if c.startswith("p_")]


def videos_of(table: pa.Table) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(video, truth, prediction) per video, in file order."""
    out = []
    names = table["video"].to_pylist()
    for video in dict.fromkeys(names):
        part = table.filter(pc.equal(table["video"], video))
        out.append((video, part["truth"].to_numpy(), part["prediction"].to_numpy()))
    return out


def _arm_trials(results: pa.Table, factors: list[str], arm: dict) -> list[str]:
    done = results.filter(pc.equal(results["status"], "completed"))
    return [r["trial_id"] for r in done.select(["trial_id", *factors]).to_pylist()
            if all(r[f] == arm[f] for f in factors)]


def _split_with_predictions(root: Path, trials: list[str]) -> str | None:
    return next((s for s in SPLITS if trials and all(_path(root, t, s).is_file() for t in trials)), None)


def per_phase(root: Path, results: pa.Table, factors: list[str], arm: dict | None) -> dict | None:
    """Relaxed (and strict) per-phase Jaccard, precision and recall of `arm`'s trials: each
    trial's per-phase means over its videos, averaged over the trials. None without files."""
    if arm is None:
        return None
    trials = _arm_trials(results, factors, arm)
    split = _split_with_predictions(root, trials)
    if split is None:
        return None
    tables = [read_predictions(root, t, split) for t in trials]
    meta = tables[0].schema.metadata or {}
    fps = float(meta.get(b"pitfalls.fps", b"1"))
    protocol = meta.get(b"pitfalls.protocol", b"matlab").decode()
    names = phase_names(tables[0])
    evals = [evaluate_videos([(g, p) for _, g, p in videos_of(t)], len(names), fps, protocol)
             for t in tables]
    rows = []
    for i, name in enumerate(names):
        row = {"phase": name}
        for kind in KINDS:
            for score in PER_PHASE:
                values = np.array([e.kinds[kind].per_phase[score][i] for e in evals])
                values = values[~np.isnan(values)]
                row[f"{kind}_{score}"] = float(values.mean()) if len(values) else None
        rows.append(row)
    return {"arm": {f: arm[f] for f in factors}, "split": split, "protocol": protocol,
            "fps": fps, "trials": len(trials), "rows": rows}


def ribbons(root: Path, results: pa.Table, factors: list[str], arms: dict[str, dict | None],
            videos: int = 2) -> list[dict]:
    """For each named arm (best, worst): the first `videos` videos of its first trial with
    predictions (test split first): truth and prediction per frame."""
    out = []
    for label, arm in arms.items():
        if arm is None:
            continue
        trials = _arm_trials(results, factors, arm)
        split = _split_with_predictions(root, trials[:1])
        if split is None:
            continue
        table = read_predictions(root, trials[0], split)
        for video, truth, pred in videos_of(table)[:videos]:
            out.append({"arm": label, "config": ", ".join(f"{f}={arm[f]}" for f in factors),
                        "trial": trials[0], "split": split, "video": video, "truth": truth,
                        "prediction": pred, "phases": phase_names(table)})
    return out

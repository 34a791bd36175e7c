"""Honest statistics over seeds: t intervals per factor combination, and paired comparisons.

Which test when (also in docs/results.md):
- A factor combination's mean over seeds gets a 95% t interval, mean ± t(0.975, n−1)·s/√n
  (s: sample std, ddof=1): seeds are few, so the normal approximation would be too narrow.
  No interval for n < 2.
- Two levels a, b of a factor are compared on *paired* trials: same levels of every other
  factor and same seed, so the difference isolates the factor (seed-to-seed variation, which is
  often larger than the effect, cancels). Per pair of levels: mean difference (b − a), Cohen's
  d_z = mean(d)/sd(d), the paired t-test (assumes roughly normal differences) and the Wilcoxon
  signed-rank test (no normality assumption; with n ≤ 5 pairs its exact two-sided p can never
  be below 0.0625, so it cannot reach 0.05). p-values are Holm-corrected across all comparisons
  of the report (strong control of the family-wise error rate, no independence assumption).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats


def t_interval(values: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf(0.5 + level / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean() - half), float(arr.mean() + half)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None entries are skipped and stay None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    m = len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_comparisons(results: pa.Table, factors: list[str], metric: str) -> list[dict]:
    """For every varied factor and pair of its levels: paired differences on matched trials."""
    done = results.filter(pc.equal(results["status"], "completed")).to_pylist()
    column = f"final_{metric}"
    rows = []
    for factor in factors:
        others = [f for f in factors if f != factor] + ["seed"]
        by_key: dict[tuple, dict] = {}
        for r in done:
            by_key.setdefault(tuple(r[o] for o in others), {})[r[factor]] = r[column]
        levels = sorted({r[factor] for r in done}, key=str)
        for a, b in combinations(levels, 2):
            diffs = [cell[b] - cell[a] for cell in by_key.values() if a in cell and b in cell]
            rows.append(_compare(factor, a, b, diffs))
    for key in ("p_t", "p_wilcoxon"):
        for row, adj in zip(rows, holm([r[key] for r in rows])):
            row[f"{key}_holm"] = adj
    return rows


def _compare(factor: str, a, b, diffs: list[float]) -> dict:
    d = np.asarray(diffs, dtype=np.float64)
    row = {"factor": factor, "level_a": a, "level_b": b, "pairs": len(d),
           "mean_diff": float(d.mean()) if len(d) else None, "d_z": None, "p_t": None,
           "p_wilcoxon": None}
    if len(d) >= 2:
        sd = d.std(ddof=1)
        row["d_z"] = float(d.mean() / sd) if sd > 0 else None
        if sd > 0:
            row["p_t"] = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)
        if np.any(d != 0):
            row["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return row

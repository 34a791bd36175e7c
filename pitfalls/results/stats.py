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

from pitfalls.results.schema import metric_column


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


def _completed(results: pa.Table, metric: str) -> pa.Table:
    done = results.filter(pc.equal(results["status"], "completed"))
    return done.filter(pc.is_valid(done[metric_column(metric)]))


def paired_comparisons(results: pa.Table, factors: list[str], metric: str) -> list[dict]:
    """For every varied factor and pair of its levels: paired differences on matched trials
    (an Arrow join on the other factors and the seed; no Python loop over trials)."""
    done, column = _completed(results, metric), metric_column(metric)
    rows = []
    for factor in factors:
        keys = [f for f in factors if f != factor] + ["seed"]
        levels = sorted(set(done[factor].to_pylist()), key=str)
        for a, b in combinations(levels, 2):
            ta = done.filter(pc.equal(done[factor], a)).select([*keys, column]).rename_columns([*keys, "va"])
            tb = done.filter(pc.equal(done[factor], b)).select([*keys, column]).rename_columns([*keys, "vb"])
            both = ta.join(tb, keys=keys, join_type="inner")
            diffs = (both["vb"].to_numpy() - both["va"].to_numpy()) if both.num_rows else []
            rows.append(_compare(factor, a, b, list(diffs)))
    for key in ("p_t", "p_wilcoxon"):
        for row, adj in zip(rows, holm([r[key] for r in rows])):
            row[f"{key}_holm"] = adj
    return rows


def _compare(factor: str, a, b, diffs: list[float]) -> dict:
    d = np.asarray(diffs, dtype=np.float64)
    low, high = t_interval(list(d))
    row = {"factor": factor, "level_a": a, "level_b": b, "pairs": len(d),
           "mean_diff": float(d.mean()) if len(d) else None, "diff_ci95_low": low,
           "diff_ci95_high": high, "d_z": None, "p_t": None, "p_wilcoxon": None}
    if len(d) >= 2:
        sd = d.std(ddof=1)
        row["d_z"] = float(d.mean() / sd) if sd > 0 else None
        if sd > 0:
            row["p_t"] = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)
        if np.any(d != 0):
            row["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return row


def marginal_effects(results: pa.Table, factors: list[str], metric: str) -> list[dict]:
    """Per factor and level: mean over the completed trials at that level (in a balanced grid,
    the average over the other factors' levels and the seeds), n and a 95% t interval."""
    done, column, out = _completed(results, metric), metric_column(metric), []
    for factor in factors:
        grouped = done.group_by([factor]).aggregate([(column, "list")]).to_pylist()
        for g in sorted(grouped, key=lambda g: str(g[factor])):
            values = g[f"{column}_list"]
            low, high = t_interval(values)
            out.append({"factor": factor, "level": g[factor], "n": len(values),
                        "mean": float(np.mean(values)), "ci95_low": low, "ci95_high": high})
    return out


def interactions(results: pa.Table, factors: list[str], metric: str) -> list[dict]:
    """For every pair of factors: the mean over trials per (level_a, level_b) cell."""
    done, column, out = _completed(results, metric), metric_column(metric), []
    for fa, fb in combinations(factors, 2):
        cells = done.group_by([fa, fb]).aggregate([(column, "count"), (column, "mean")]).to_pylist()
        out.append({"factors": [fa, fb], "cells": [
            {"a": c[fa], "b": c[fb], "n": c[f"{column}_count"], "mean": c[f"{column}_mean"]}
            for c in sorted(cells, key=lambda c: (str(c[fa]), str(c[fb])))]})
    return out


def best_configurations(combos: list[dict], factors: list[str], mode: str) -> dict:
    """The best factor combination by mean overall and within each level of each factor."""
    scored = [c for c in combos if c.get("mean") is not None]
    if not scored:
        return {"overall": None, "per_level": []}

    def pick(rows):
        return (max if mode == "max" else min)(rows, key=lambda c: c["mean"])

    def brief(c):
        return {**{f: c[f] for f in factors}, "n": c["n"], "mean": c["mean"]}

    per_level = [{"factor": f, "level": level,
                  "best": brief(pick([c for c in scored if c[f] == level]))}
                 for f in factors for level in sorted({c[f] for c in scored}, key=str)]
    return {"overall": brief(pick(scored)), "per_level": per_level}


IMPORTANCE_MAX_TRIALS = 2000


def factor_importance(results: pa.Table, factors: list[str], metric: str, mode: str,
                      seed: int = 0) -> dict[str, float] | None:
    """Optuna's fANOVA importance of the factors for the metric (None with < 4 trials or one
    factor: a random-forest variance decomposition needs some data to split on). Above
    IMPORTANCE_MAX_TRIALS completed trials a seeded random subset of that size is used: the
    forest's cost grows with the trials, the importance estimate hardly does."""
    done = _completed(results, metric)
    if done.num_rows < 4 or len(factors) < 2:
        return None
    if done.num_rows > IMPORTANCE_MAX_TRIALS:
        pick = np.random.default_rng(seed).choice(done.num_rows, IMPORTANCE_MAX_TRIALS, replace=False)
        done = done.take(pa.array(np.sort(pick)))
    rows = done.select([*factors, metric_column(metric)]).to_pylist()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {f: optuna.distributions.CategoricalDistribution(sorted({r[f] for r in rows}, key=str))
             for f in factors}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for r in rows:
        study.add_trial(optuna.trial.create_trial(
            params={f: r[f] for f in factors}, distributions=dists, value=r[metric_column(metric)]))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(
        study, evaluator=evaluator).items()}

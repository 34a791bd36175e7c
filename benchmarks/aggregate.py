"""Time to build every comparison table for a large study (target: <= 3 s for 100,000 trials).

    uv run python benchmarks/aggregate.py [--trials 100000]

Builds a synthetic grid result set in the result schema (4 norms x 3 frozen depths x 3 sequence
lengths x 2 batch diversities x seeds, one epoch curve each), then times, in one run: the
per-combination table with intervals and missing counts, marginal effects, interactions, best
configurations, fANOVA importance (on a seeded subset of at most 2,000 trials) and paired
comparisons (Holm), plus the Markdown rendering. Needs no Ray.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import numpy as np
import pyarrow as pa

from pitfalls.results.analysis import Analysis, comparison_data
from pitfalls.results.render_md import comparison_markdown
from pitfalls.results.schema import SCHEMA

LEVELS = {"norm": ["batch", "group", "layer", "iternorm"], "frozen_stages": [0, 1, 2],
          "seq_len": [8, 16, 32], "videos_per_batch": [1, 4]}


def synthetic_results(trials: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(*LEVELS.values()))
    seeds = -(-trials // len(combos))
    cols: dict[str, list] = {name: [] for name in LEVELS}
    cols["seed"] = []
    for s in range(seeds):
        for combo in combos:
            for name, value in zip(LEVELS, combo):
                cols[name].append(value)
            cols["seed"].append(s)
    n = len(cols["seed"])
    effect = np.array([{"batch": 0.0, "group": 0.03, "layer": 0.02, "iternorm": 0.01}[v] for v in cols["norm"]])
    final = 0.6 + effect + rng.normal(0, 0.05, n)
    data = {**{k: v[:trials] for k, v in cols.items()}, "study": ["bench"] * trials,
            "trial_id": [f"t{i}" for i in range(trials)], "status": ["completed"] * trials,
            "lr": [1e-3] * trials, "weight_decay": [1e-4] * trials, "epochs": [1] * trials,
            "final_val_accuracy": final[:trials], "best_val_accuracy": final[:trials],
            "curve_val_accuracy": [[float(v)] for v in final[:trials]]}
    return pa.Table.from_pydict({f.name: data.get(f.name, pa.nulls(trials, f.type)) for f in SCHEMA},
                                schema=SCHEMA)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100_000)
    args = ap.parse_args()
    results = synthetic_results(args.trials)
    seeds = len(set(results["seed"].to_pylist()))
    analysis = Analysis("bench", "val_accuracy", "max", list(LEVELS), paired=True,
                        levels=LEVELS, expected=seeds)
    comparison_data(results.slice(0, 1000), analysis)  # warm-up: imports (scipy, optuna, sklearn)
    t0 = time.perf_counter()
    data = comparison_data(results, analysis)
    t1 = time.perf_counter()
    comparison_markdown(results, analysis)
    t2 = time.perf_counter()
    print(f"# aggregate benchmark: {results.num_rows} trials, {len(data['combinations'])} "
          f"combinations, {len(data['paired'])} paired comparisons; {platform.machine()}, "
          f"pyarrow {pa.__version__}")
    print(f"all tables (comparison_data): {t1 - t0:.2f} s   (target <= 3 s)")
    print(f"markdown report (recomputes):  {t2 - t1:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

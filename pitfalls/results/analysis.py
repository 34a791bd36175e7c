"""The numbers of a study's comparison: from results in the schema and an `Analysis` (what to
compare) to every table's rows (`comparison_data`), rendered by `render_md` and `render_html`.

Every source (a study directory, a results Parquet file, an MLflow experiment) becomes
(results table in the schema, `Analysis`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pitfalls.config import CORE_FACTORS, OPTIONAL_FACTORS, StudySpec, level_label
from pitfalls.config.params import NUISANCE_PARAMS
from pitfalls.probes.registry import LEAK_FLAG
from pitfalls.results.schema import companion_metric, metric_column
from pitfalls.results.stats import (
    best_configurations,
    factor_importance,
    interactions,
    marginal_effects,
    paired_comparisons,
    t_interval,
)


@dataclass(frozen=True)
class Analysis:
    """What to compare: the factors (table rows), the metric and whether trials can be paired."""

    name: str
    metric: str
    mode: str
    factors: list[str]
    paired: bool  # trials differ only in factors and seed (grid): paired tests are meaningful
    # grid studies: every combination of these levels should have `expected` trials (one per seed)
    levels: dict[str, list] | None = None
    expected: int | None = None
    # linked factors: name -> its levels (mappings parameter -> value); a row's level is derived
    # from its parameter columns (`with_factor_columns`), labelled `videos_per_batch=1, seq_len=64`
    linked: dict[str, tuple[dict, ...]] | None = None
    # the trials' prediction files (`<study>/predictions`): per-phase scores and ribbons
    predictions: Path | None = None


def load_resolved_study(study_dir: Path) -> StudySpec:
    from pitfalls.config import parse_study, read_yaml

    return parse_study(read_yaml(study_dir / "study.yaml"), source=str(study_dir / "study.yaml"),
                       check_environment=False)


def analysis_of_study(spec: StudySpec) -> Analysis:
    space = spec.search_space
    factors = space.varied_factors or [n for n, _ in space.factors]
    grid = spec.searcher.type == "grid"
    linked = {n: space.factor_dict[n] for n in space.linked if n in factors}
    levels = {f: [level_label(v) for v in linked[f]] if f in linked else list(space.factor_dict[f])
              for f in factors}
    return Analysis(spec.name, spec.metric.name, spec.metric.mode, factors,
                    paired=grid and bool(space.varied_factors),
                    levels=levels if grid else None, expected=len(spec.seeds) if grid else None,
                    linked=linked or None)


def with_factor_columns(results: pa.Table, a: Analysis) -> pa.Table:
    """Add a column per linked factor: the label of the level a row's parameter columns match
    (a row that matches none, e.g. from an edited study, is labelled with its own values)."""
    for name, levels in (a.linked or {}).items():
        if name in results.column_names:
            continue
        params = list(levels[0])
        labels = {tuple(level[q] for q in params): level_label(level) for level in levels}
        rows = zip(*(results[q].to_pylist() for q in params)) if results.num_rows else ()
        column = [labels.get(key) or level_label(dict(zip(params, key))) for key in rows]
        results = results.append_column(name, pa.array(column, pa.string()))
    return results


def _with_missing(table: pa.Table, a: Analysis) -> pa.Table:
    """Grid studies: add absent combinations and a `missing` count (expected − completed −
    failed), so unfinished or never-run trials are reported, not silently averaged away."""
    if a.expected is None or a.levels is None:
        return table
    from itertools import product

    rows = table.to_pylist()
    present = {tuple(r[f] for f in a.factors) for r in rows}
    for combo in product(*(a.levels[f] for f in a.factors)):
        if combo not in present:
            rows.append({**dict(zip(a.factors, combo)), "n": 0, "failed": 0})
    for r in rows:
        r["missing"] = max(a.expected - (r.get("n") or 0) - (r.get("failed") or 0), 0)

    def order(f: str, v) -> tuple[int, str]:  # the study's order of levels (8 before 48)
        levels = a.levels[f]
        return (levels.index(v), "") if v in levels else (len(levels), str(v))

    rows.sort(key=lambda r: tuple(order(f, r[f]) for f in a.factors))
    return pa.Table.from_pylist(rows)


def infer_analysis(results: pa.Table, name: str, metric: str, mode: str) -> Analysis:
    """Without a study file: the core factors that vary are the factors; pairing only when the
    nuisance parameters are the same in every trial (a grid, not a search)."""
    def distinct(col):
        return len({v for v in results[col].to_pylist() if v is not None})

    factors = [f for f in CORE_FACTORS + OPTIONAL_FACTORS if distinct(f) > 1] or ["norm"]
    fixed_nuisance = all(distinct(c) <= 1 for c in NUISANCE_PARAMS)
    return Analysis(name, metric, mode, factors, paired=fixed_nuisance)


def _analysis(results: pa.Table, a: Analysis, combos: list[dict]) -> dict:
    return {
        "marginal": marginal_effects(results, a.factors, a.metric),
        "interactions": interactions(results, a.factors, a.metric),
        "best": best_configurations(combos, a.factors, a.mode),
        "importance": factor_importance(results, a.factors, a.metric, a.mode),
        "paired": paired_comparisons(results, a.factors, a.metric) if a.paired else [],
    }


def comparison_table(results: pa.Table, factors: list[str], metric: str) -> pa.Table:
    """Group completed trials by `factors`: n, mean, std (ddof=1) of `final_<metric>`, failed
    count, and how many probed trials leaked the future in train mode (`leaks` of `probed`)."""
    column = metric_column(metric)
    done = results.filter(pc.equal(results["status"], "completed"))
    companion = companion_metric(metric)  # the other split's value, shown next to it
    also = metric_column(companion) if companion and done.num_rows and pc.any(
        pc.is_valid(done[metric_column(companion)])).as_py() else None
    stats = done.group_by(factors).aggregate([
        (column, "count"), (column, "mean"),
        (column, "stddev", pc.VarianceOptions(ddof=1)),
        (LEAK_FLAG, "sum"), (LEAK_FLAG, "count"), (column, "list"),
        *([(also, "mean"), (also, "stddev", pc.VarianceOptions(ddof=1))] if also else []),
    ]).rename_columns([*factors, "n", "mean", "std", "leaks", "probed", "values",
                       *(["also_mean", "also_std"] if also else [])])
    intervals = [t_interval(v) for v in stats["values"].to_pylist()]
    stats = stats.drop_columns(["values"]).append_column(
        "ci95_low", pa.array([i[0] for i in intervals], pa.float64())).append_column(
        "ci95_high", pa.array([i[1] for i in intervals], pa.float64()))
    failed = results.filter(pc.equal(results["status"], "failed"))
    fails = failed.group_by(factors).aggregate([("trial_id", "count")]).rename_columns(
        [*factors, "failed"])
    all_combos = results.group_by(factors).aggregate([]).select(factors)
    table = all_combos.join(stats, keys=factors, join_type="left outer")
    table = table.join(fails, keys=factors, join_type="left outer")
    table = table.set_column(table.schema.get_field_index("failed"), "failed",
                             pc.fill_null(table["failed"], 0))
    table = table.set_column(table.schema.get_field_index("n"), "n", pc.fill_null(table["n"], 0))
    return table.sort_by([(f, "ascending") for f in factors])


def combinations_table(results: pa.Table, a: Analysis) -> pa.Table:
    """One row per factor combination (with missing counts for grid studies): `--format csv`."""
    results = with_factor_columns(results, a)
    return _with_missing(comparison_table(results, a.factors, a.metric), a)


def comparison_data(results: pa.Table, a: Analysis) -> dict:
    """Every number of the report, machine-readable (`--format json`); computed once and shared
    by the Markdown and HTML renderings."""
    results = with_factor_columns(results, a)
    combos = combinations_table(results, a).to_pylist()
    data = {"study": a.name, "metric": a.metric, "mode": a.mode, "factors": a.factors,
            "combinations": combos, **_analysis(results, a, combos)}
    if a.predictions is not None and a.predictions.is_dir():
        from pitfalls.results.phases import per_phase

        data["per_phase"] = per_phase(a.predictions, results, a.factors, data["best"]["overall"])
    return data


def worst_configuration(data: dict) -> dict | None:
    """The arm with the worst mean (the report's ribbons show it next to the best)."""
    scored = [c for c in data["combinations"] if c.get("mean") is not None]
    if not scored:
        return None
    return (min if data["mode"] == "max" else max)(scored, key=lambda c: c["mean"])

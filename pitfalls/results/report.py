"""`pitfalls report`: the comparison, from a study directory, a results Parquet file, or an
MLflow experiment. Every source becomes (results table in the schema, `Analysis`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml

from pitfalls.config import CORE_FACTORS, OPTIONAL_FACTORS, StudySpec, level_label, parse_study
from pitfalls.results.stats import (best_configurations, factor_importance, interactions,
                                    marginal_effects, paired_comparisons)
from pitfalls.results.store import RESULTS_FILE, read_results
from pitfalls.results.table import comparison_table, paired_markdown, to_markdown

COMPARISON_FILE = "comparison.md"


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


def load_resolved_study(study_dir: Path) -> StudySpec:
    raw = yaml.safe_load((study_dir / "study.yaml").read_text())
    return parse_study(raw, source=str(study_dir / "study.yaml"), check_environment=False)


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
    fixed_nuisance = all(distinct(c) <= 1 for c in ("lr", "weight_decay"))
    return Analysis(name, metric, mode, factors, paired=fixed_nuisance)


def _analysis(results: pa.Table, a: Analysis, combos: list[dict]) -> dict:
    return {
        "marginal": marginal_effects(results, a.factors, a.metric),
        "interactions": interactions(results, a.factors, a.metric),
        "best": best_configurations(combos, a.factors, a.mode),
        "importance": factor_importance(results, a.factors, a.metric, a.mode),
        "paired": paired_comparisons(results, a.factors, a.metric) if a.paired else [],
    }


def combinations_table(results: pa.Table, a: Analysis) -> pa.Table:
    """One row per factor combination (with missing counts for grid studies): `--format csv`."""
    results = with_factor_columns(results, a)
    return _with_missing(comparison_table(results, a.factors, a.metric), a)


def comparison_data(results: pa.Table, a: Analysis) -> dict:
    """Every number of the report, machine-readable (`--format json`); computed once and shared
    by the Markdown and HTML renderings."""
    results = with_factor_columns(results, a)
    combos = combinations_table(results, a).to_pylist()
    return {"study": a.name, "metric": a.metric, "mode": a.mode, "factors": a.factors,
            "combinations": combos, **_analysis(results, a, combos)}


def _ci(low, high) -> str:
    return f"[{low:.4f}, {high:.4f}]" if low is not None else "–"


def comparison_markdown(results: pa.Table, a: Analysis, data: dict | None = None) -> str:
    data = data or comparison_data(results, a)
    table = pa.Table.from_pylist(data["combinations"])
    n_done = sum(1 for s in results["status"].to_pylist() if s == "completed")
    over = "seeds" if a.paired else "trials"
    lines = [f"# {a.name}: {a.metric} ({a.mode}) at the last epoch", "",
             f"{results.num_rows} trials, {n_done} completed, {results.num_rows - n_done} failed; "
             f"mean ± sample std (ddof=1) over {over}, 95% t interval.", "",
             to_markdown(table, a.factors, a.metric, a.mode, over),
             "## Marginal effects", "", "Each level averaged over the other factors and the seeds.",
             "", "| factor | level | n | mean | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {m['factor']} | {m['level']} | {m['n']} | {m['mean']:.4f} | "
              f"{_ci(m['ci95_low'], m['ci95_high'])} |" for m in data["marginal"]]
    for inter in data["interactions"]:
        fa, fb = inter["factors"]
        cols = sorted({c["b"] for c in inter["cells"]}, key=str)
        lines += ["", f"## Interaction {fa} × {fb} (mean {a.metric})", "",
                  f"| {fa} \\ {fb} | " + " | ".join(map(str, cols)) + " |",
                  "|---|" + "---|" * len(cols)]
        for row in sorted({c["a"] for c in inter["cells"]}, key=str):
            means = {c["b"]: c["mean"] for c in inter["cells"] if c["a"] == row}
            lines.append(f"| {row} | " + " | ".join(
                f"{means[b]:.4f}" if b in means else "–" for b in cols) + " |")
    best = data["best"]
    if best["overall"]:
        def fmt(c):
            return ", ".join(f"{f}={c[f]}" for f in a.factors) + f" ({c['mean']:.4f}, n={c['n']})"
        lines += ["", f"## Best configurations ({a.mode} mean)", "",
                  f"- overall: {fmt(best['overall'])}"]
        lines += [f"- {r['factor']}={r['level']}: {fmt(r['best'])}" for r in best["per_level"]]
    if data["importance"]:
        lines += ["", "## Factor importance (Optuna fANOVA)", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in data["importance"].items()]
    if data["paired"]:
        lines += ["", "## Paired comparisons", "",
                  "Trials matched on every other factor and the seed; Δ = b − a; "
                  "Holm-corrected over all rows.", "", paired_markdown(data["paired"], a.metric)]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_comparison(study_dir: Path, spec: StudySpec) -> tuple[str, list[Path]]:
    """Rebuild `comparison.md` and `report.html` of a study directory from its own files."""
    from pitfalls.results.html import REPORT_FILE, render_html

    results, analysis = read_results(study_dir / RESULTS_FILE), analysis_of_study(spec)
    data = comparison_data(results, analysis)
    text = comparison_markdown(results, analysis, data)
    (study_dir / COMPARISON_FILE).write_text(text)
    (study_dir / REPORT_FILE).write_text(render_html(results, analysis, data))
    return text, [study_dir / COMPARISON_FILE, study_dir / REPORT_FILE]

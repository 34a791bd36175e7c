"""`pitfalls report DIR`: rebuild the comparison table from a study directory alone."""

from __future__ import annotations

from pathlib import Path

import yaml

from pitfalls.config import StudySpec, parse_study
from pitfalls.results.store import RESULTS_FILE, read_results
from pitfalls.results.stats import (best_configurations, factor_importance, interactions,
                                    marginal_effects, paired_comparisons)
from pitfalls.results.table import comparison_table, paired_markdown, to_markdown

COMPARISON_FILE = "comparison.md"


def load_resolved_study(study_dir: Path) -> StudySpec:
    raw = yaml.safe_load((study_dir / "study.yaml").read_text())
    return parse_study(raw, source=str(study_dir / "study.yaml"), check_environment=False)


def _factors(spec: StudySpec) -> list[str]:
    return spec.search_space.varied_factors or [n for n, _ in spec.search_space.factors]


def comparison_markdown(study_dir: Path, spec: StudySpec) -> str:
    results = read_results(study_dir / RESULTS_FILE)
    factors = _factors(spec)
    table = comparison_table(results, factors, spec.metric.name)
    n_done = sum(1 for s in results["status"].to_pylist() if s == "completed")
    # grid: the trials of a row differ only in their seed; optuna: also in sampled nuisance values
    over = "seeds" if spec.searcher.type == "grid" else "trials (one seed, sampled nuisance values)"
    header = (f"# {spec.name}: {spec.metric.name} ({spec.metric.mode}) at the last epoch\n\n"
              f"{results.num_rows} trials, {n_done} completed, "
              f"{results.num_rows - n_done} failed; mean ± sample std (ddof=1) over {over}, "
              f"95% t interval.\n\n")
    text = header + to_markdown(table, factors, spec.metric.name, spec.metric.mode,
                                "seeds" if spec.searcher.type == "grid" else "trials")
    data = _analysis(results, factors, spec, table.to_pylist())
    text += "\n## Marginal effects\n\nEach level averaged over the other factors and the seeds.\n\n"
    text += "| factor | level | n | mean | 95% CI |\n|---|---|---|---|---|\n"
    for m in data["marginal"]:
        ci = (f"[{m['ci95_low']:.4f}, {m['ci95_high']:.4f}]" if m["ci95_low"] is not None else "–")
        text += f"| {m['factor']} | {m['level']} | {m['n']} | {m['mean']:.4f} | {ci} |\n"
    for inter in data["interactions"]:
        fa, fb = inter["factors"]
        levels_b = sorted({c["b"] for c in inter["cells"]}, key=str)
        text += f"\n## Interaction {fa} × {fb} (mean {spec.metric.name})\n\n"
        text += f"| {fa} \\ {fb} | " + " | ".join(map(str, levels_b)) + " |\n"
        text += "|---|" + "---|" * len(levels_b) + "\n"
        for a in sorted({c["a"] for c in inter["cells"]}, key=str):
            means = {c["b"]: c["mean"] for c in inter["cells"] if c["a"] == a}
            text += f"| {a} | " + " | ".join(
                f"{means[b]:.4f}" if b in means else "–" for b in levels_b) + " |\n"
    best = data["best"]
    if best["overall"]:
        def fmt(c):
            return ", ".join(f"{f}={c[f]}" for f in factors) + f" ({c['mean']:.4f}, n={c['n']})"
        text += f"\n## Best configurations ({spec.metric.mode} mean)\n\n- overall: {fmt(best['overall'])}\n"
        for row in best["per_level"]:
            text += f"- {row['factor']}={row['level']}: {fmt(row['best'])}\n"
    if data["importance"]:
        text += ("\n## Factor importance (Optuna fANOVA)\n\n"
                 + "\n".join(f"- {k}: {v:.3f}" for k, v in data["importance"].items()) + "\n")
    if spec.searcher.type == "grid" and spec.search_space.varied_factors:
        text += ("\n## Paired comparisons\n\nTrials matched on every other factor and the seed; "
                 "Δ = b − a; Holm-corrected over all rows.\n\n"
                 + paired_markdown(paired_comparisons(results, factors, spec.metric.name),
                                   spec.metric.name))
    return text


def comparison_data(study_dir: Path, spec: StudySpec) -> dict:
    """The same numbers, machine-readable (`pitfalls report --format json`)."""
    results = read_results(study_dir / RESULTS_FILE)
    factors = _factors(spec)
    combos = comparison_table(results, factors, spec.metric.name).to_pylist()
    return {
        "study": spec.name, "metric": spec.metric.name, "mode": spec.metric.mode,
        "factors": factors, "combinations": combos,
        **_analysis(results, factors, spec, combos),
        "paired": (paired_comparisons(results, factors, spec.metric.name)
                   if spec.searcher.type == "grid" and spec.search_space.varied_factors else []),
    }


def _analysis(results, factors: list[str], spec: StudySpec, combos: list[dict]) -> dict:
    m = spec.metric.name
    return {
        "marginal": marginal_effects(results, factors, m),
        "interactions": interactions(results, factors, m),
        "best": best_configurations(combos, factors, spec.metric.mode),
        "importance": factor_importance(results, factors, m, spec.metric.mode),
    }


def write_comparison(study_dir: Path, spec: StudySpec) -> tuple[str, Path]:
    text = comparison_markdown(study_dir, spec)
    path = study_dir / COMPARISON_FILE
    path.write_text(text)
    return text, path

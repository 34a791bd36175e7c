"""The comparison as Markdown (`comparison.md`, `pitfalls report`), from `comparison_data`."""

from __future__ import annotations

import math

import pyarrow as pa

from pitfalls.markdown import table
from pitfalls.results.analysis import Analysis, comparison_data
from pitfalls.results.schema import companion_metric, metric_when
from pitfalls.scoring.protocols import PHASE_COLUMNS


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _ci(low, high) -> str:
    return f"[{low:.4f}, {high:.4f}]" if low is not None else "–"


def to_markdown(combinations: pa.Table, factors: list[str], metric: str, mode: str,
                over: str = "seeds") -> str:
    """One row per factor combination with the best mean marked; std is '–' where fewer than
    two trials completed."""
    rows = combinations.to_pylist()
    means = [r["mean"] for r in rows if r.get("mean") is not None]
    best = (max(means) if mode == "max" else min(means)) if means else None
    probed = any(r.get("probed") for r in rows)
    missing = "missing" in combinations.column_names
    also = companion_metric(metric) if "also_mean" in combinations.column_names else None
    head = [*factors, "n", f"{metric} (mean ± std over {over})", "95% CI", "failed"]
    if also:
        head.insert(len(factors) + 3, f"{also} (mean ± std)")
    if missing:
        head.append("missing")
    if probed:
        head.append("leaks future (train mode)")
    cells = []
    for r in rows:
        value = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}" if r.get("mean") is not None else "–"
        if best is not None and r.get("mean") == best:
            value = f"**{value}**"
        ci = f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]" if r.get("ci95_low") is not None else "–"
        line = [*(str(r[f]) for f in factors), str(r["n"]), value, ci, str(r["failed"])]
        if also:
            line.insert(len(factors) + 3, f"{_fmt(r['also_mean'])} ± {_fmt(r['also_std'])}"
                        if r.get("also_mean") is not None else "–")
        if missing:
            line.append(str(r["missing"]))
        if probed:
            line.append(f"{int(r.get('leaks') or 0)}/{r.get('probed') or 0}")
        cells.append(line)
    return table(head, cells)


def paired_markdown(rows: list[dict], metric: str) -> str:
    """The paired comparisons as Markdown (differences are level_b − level_a)."""
    def p(x):
        return "–" if x is None else f"{x:.3g}"

    head = ["factor", "a → b", "pairs", f"mean Δ{metric}", "95% CI of Δ", "d_z", "p (t, Holm)",
            "p (Wilcoxon, Holm)"]
    return table(head, [
        [r["factor"], f"{r['level_a']} → {r['level_b']}", r["pairs"], _fmt(r["mean_diff"]),
         f"[{_fmt(r['diff_ci95_low'])}, {_fmt(r['diff_ci95_high'])}]"
         if r["diff_ci95_low"] is not None else "–", p(r["d_z"]), p(r["p_t_holm"]),
         p(r["p_wilcoxon_holm"])] for r in rows])


def phase_markdown(pp: dict) -> list[str]:
    """The best arm's per-phase scores (percent), relaxed and strict, as the community tabulates."""
    arm = ", ".join(f"{k}={v}" for k, v in pp["arm"].items())
    head = ["phase", *(c.replace("_", " ") for c in PHASE_COLUMNS)]
    rows = [[r["phase"], *("–" if r[c] is None else f"{r[c]:.2f}" for c in PHASE_COLUMNS)]
            for r in pp["rows"]]
    return [f"## Per phase: best configuration ({arm}), {pp['split']} split", "",
            f"Protocol {pp['protocol']}, percent; per phase the mean over videos, then over the "
            f"{pp['trials']} trial(s) of the configuration (docs/evaluation.md).", "",
            table(head, rows).rstrip("\n")]


def comparison_markdown(results: pa.Table, a: Analysis, data: dict | None = None) -> str:
    data = data or comparison_data(results, a)
    n_done = sum(1 for s in results["status"].to_pylist() if s == "completed")
    over = "seeds" if a.paired else "trials"
    lines = [f"# {a.name}: {a.metric} ({a.mode}) {metric_when(a.metric)}", "",
             f"{results.num_rows} trials, {n_done} completed, {results.num_rows - n_done} failed; "
             f"mean ± sample std (ddof=1) over {over}, 95% t interval.", "",
             to_markdown(pa.Table.from_pylist(data["combinations"]), a.factors, a.metric, a.mode, over),
             "## Marginal effects", "", "Each level averaged over the other factors and the seeds.",
             "", table(["factor", "level", "n", "mean", "95% CI"], [
                 [m["factor"], m["level"], m["n"], f"{m['mean']:.4f}", _ci(m["ci95_low"], m["ci95_high"])]
                 for m in data["marginal"]]).rstrip("\n")]
    for inter in data["interactions"]:
        fa, fb = inter["factors"]
        cols = sorted({c["b"] for c in inter["cells"]}, key=str)
        rows = []
        for row in sorted({c["a"] for c in inter["cells"]}, key=str):
            means = {c["b"]: c["mean"] for c in inter["cells"] if c["a"] == row}
            rows.append([row, *(f"{means[b]:.4f}" if b in means else "–" for b in cols)])
        lines += ["", f"## Interaction {fa} × {fb} (mean {a.metric})", "",
                  table([f"{fa} \\ {fb}", *cols], rows).rstrip("\n")]
    if data.get("per_phase"):
        lines += ["", *phase_markdown(data["per_phase"])]
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

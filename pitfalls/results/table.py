"""Comparison table: one row per factor combination, n and mean ± std over seeds."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from pitfalls.results.stats import t_interval


def comparison_table(results: pa.Table, factors: list[str], metric: str) -> pa.Table:
    """Group completed trials by `factors`: n, mean, std (ddof=1) of `final_<metric>`, failed
    count, and how many probed trials leaked the future in train mode (`leaks` of `probed`)."""
    column = f"final_{metric}"
    done = results.filter(pc.equal(results["status"], "completed"))
    stats = done.group_by(factors).aggregate([
        (column, "count"), (column, "mean"),
        (column, "stddev", pc.VarianceOptions(ddof=1)),
        ("probe_leak_train", "sum"), ("probe_leak_train", "count"), (column, "list"),
    ]).rename_columns([*factors, "n", "mean", "std", "leaks", "probed", "values"])
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


def paired_markdown(rows: list[dict], metric: str) -> str:
    """The paired comparisons as Markdown (differences are level_b − level_a)."""
    def p(x):
        return "–" if x is None else f"{x:.3g}"

    lines = [f"| factor | a → b | pairs | mean Δ{metric} | 95% CI of Δ | d_z | p (t, Holm) | "
             "p (Wilcoxon, Holm) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = (f"[{_fmt(r['diff_ci95_low'])}, {_fmt(r['diff_ci95_high'])}]"
              if r["diff_ci95_low"] is not None else "–")
        lines.append(f"| {r['factor']} | {r['level_a']} → {r['level_b']} | {r['pairs']} | "
                     f"{_fmt(r['mean_diff'])} | {ci} | {p(r['d_z'])} | {p(r['p_t_holm'])} | "
                     f"{p(r['p_wilcoxon_holm'])} |")
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def to_markdown(table: pa.Table, factors: list[str], metric: str, mode: str,
                over: str = "seeds") -> str:
    """Markdown with the best mean marked; std is '–' where fewer than two trials completed."""
    rows = table.to_pylist()
    means = [r["mean"] for r in rows if r.get("mean") is not None]
    best = (max(means) if mode == "max" else min(means)) if means else None
    probed = any(r.get("probed") for r in rows)
    missing = "missing" in table.column_names
    head = [*factors, "n", f"{metric} (mean ± std over {over})", "95% CI", "failed"]
    if missing:
        head.append("missing")
    if probed:
        head.append("leaks future (train mode)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        value = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}" if r.get("mean") is not None else "–"
        if best is not None and r.get("mean") == best:
            value = f"**{value}**"
        ci = f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]" if r.get("ci95_low") is not None else "–"
        cells = [*(str(r[f]) for f in factors), str(r["n"]), value, ci, str(r["failed"])]
        if missing:
            cells.append(str(r["missing"]))
        if probed:
            cells.append(f"{int(r.get('leaks') or 0)}/{r.get('probed') or 0}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

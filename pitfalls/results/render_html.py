"""A self-contained HTML report: the comparison tables plus figures (inline PNGs), rendered from
`comparison_data` through a jinja2 template (`templates/report.html.j2`, autoescaped)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pitfalls.results.analysis import Analysis, comparison_data, with_factor_columns, worst_configuration
from pitfalls.results.figures import figures, ribbon_figure
from pitfalls.results.schema import metric_when
from pitfalls.scoring.protocols import PHASE_COLUMNS

TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def render_html(results: pa.Table, a: Analysis, data: dict | None = None) -> str:
    import jinja2

    results = with_factor_columns(results, a)
    data = data or comparison_data(results, a)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent),
                             autoescape=True, keep_trailing_newline=True)
    env.filters["cell"] = _cell
    ribbon = None
    if a.predictions is not None and a.predictions.is_dir():
        from pitfalls.results.phases import ribbons

        ribbon = ribbon_figure(ribbons(a.predictions, results, a.factors,
                                       {"best": data["best"]["overall"], "worst": worst_configuration(data)}))
    per_phase = data.get("per_phase")
    return env.get_template(TEMPLATE.name).render(
        when=metric_when(a.metric), ribbon=ribbon, per_phase=per_phase,
        phase_columns=["phase", *PHASE_COLUMNS],
        name=a.name, metric=a.metric, mode=a.mode, trials=results.num_rows,
        over="seeds" if a.paired else "trials", data=data, factors=list(a.factors),
        combination_columns=[*a.factors, "n", "mean", "std", "ci95_low", "ci95_high", "failed"],
        figures=figures(results, a, data),
        importance=[{"factor": k, "importance": v} for k, v in (data["importance"] or {}).items()])

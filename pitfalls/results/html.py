"""A self-contained HTML report: the comparison tables plus matplotlib figures (inline PNGs)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pitfalls.results.report import Analysis, comparison_data, with_factor_columns

# Marks the page as rendered: figures loaded (naturalWidth > 0) out of all, and any JS error.
_CHECK = """<script>
window.onerror = function (m) { document.body.dataset.jsError = String(m); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.figures = ok + '/' + imgs.length;
});
</script>"""
_STYLE = """<style>
body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
</style>"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("–" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _xticks(ax, x, labels: list[str]) -> None:
    """Tick labels, slanted when long (a linked factor's `videos_per_batch=1, seq_len=64`)."""
    if max(map(len, labels), default=0) > 10:
        ax.set_xticks(x, labels, rotation=25, ha="right")
    else:
        ax.set_xticks(x, labels)


def _figures(results: pa.Table, a: Analysis, data: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    n = len(a.factors)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, factor in zip(axes[0], a.factors):
        rows = [m for m in data["marginal"] if m["factor"] == factor]
        x = np.arange(len(rows))
        means = [m["mean"] for m in rows]
        err = [[m["mean"] - m["ci95_low"] if m["ci95_low"] is not None else 0 for m in rows],
               [m["ci95_high"] - m["mean"] if m["ci95_high"] is not None else 0 for m in rows]]
        ax.errorbar(x, means, yerr=err, fmt="o", capsize=4)
        _xticks(ax, x, [str(m["level"]) for m in rows])
        ax.set_title(factor)
        ax.set_ylabel(a.metric)
    fig.suptitle("Marginal effects (mean, 95% t interval)", y=1.04)
    figs.append(("Effect plot", _png(fig)))

    for inter in data["interactions"]:
        fa, fb = inter["factors"]
        ra = sorted({c["a"] for c in inter["cells"]}, key=str)
        rb = sorted({c["b"] for c in inter["cells"]}, key=str)
        grid = np.full((len(ra), len(rb)), np.nan)
        for c in inter["cells"]:
            grid[ra.index(c["a"]), rb.index(c["b"])] = c["mean"]
        if not np.isfinite(grid).any() or grid.size < 2:
            continue  # nothing completed, or a single cell: no heatmap to draw
        fig, ax = plt.subplots(figsize=(1.2 * len(rb) + 2.5, 0.8 * len(ra) + 1.8))
        im = ax.imshow(grid, cmap="viridis")
        _xticks(ax, range(len(rb)), [str(b) for b in rb])
        ax.set_yticks(range(len(ra)), map(str, ra))
        ax.set_xlabel(fb)
        ax.set_ylabel(fa)
        for i in range(len(ra)):
            for j in range(len(rb)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w")
        fig.colorbar(im, ax=ax, label=a.metric)
        figs.append((f"Interaction {fa} × {fb}", _png(fig)))

    done = results.filter(pc.equal(results["status"], "completed")).to_pylist()
    if not any(r[f"curve_{a.metric}"] for r in done):
        return figs
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, factor in zip(axes[0], a.factors):
        for level in sorted({r[factor] for r in done}, key=str):
            curves = [r[f"curve_{a.metric}"] for r in done if r[factor] == level and r[f"curve_{a.metric}"]]
            if not curves:
                continue
            length = min(map(len, curves))
            mean = np.mean([c[:length] for c in curves], axis=0)
            ax.plot(np.arange(1, length + 1), mean, marker="o", label=str(level))
        ax.set_title(factor)
        ax.set_xlabel("epoch")
        ax.set_ylabel(a.metric)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle("Learning curves per level (mean over trials)", y=1.04)
    figs.append(("Learning curves", _png(fig)))
    return figs


REPORT_FILE = "report.html"


def render_html(results: pa.Table, a: Analysis, data: dict | None = None) -> str:
    results = with_factor_columns(results, a)
    data = data or comparison_data(results, a)
    cols = [*a.factors, "n", "mean", "std", "ci95_low", "ci95_high", "failed"]
    parts = [f"<h1>{html.escape(a.name)}: {html.escape(a.metric)} ({a.mode})</h1>",
             f"<p>{results.num_rows} trials; metric at the last epoch; mean ± sample std over "
             f"{'seeds' if a.paired else 'trials'}, 95% t intervals. Statistics: see docs/results.md.</p>",
             "<h2>Factor combinations</h2>", _table(data["combinations"], cols)]
    for title, uri in _figures(results, a, data):
        parts += [f"<h2>{html.escape(title)}</h2>", f'<img alt="{html.escape(title)}" src="{uri}">']
    parts += ["<h2>Marginal effects</h2>",
              _table(data["marginal"], ["factor", "level", "n", "mean", "ci95_low", "ci95_high"])]
    if data["best"]["overall"]:
        parts += ["<h2>Best configuration</h2>", _table([data["best"]["overall"]], [*a.factors, "n", "mean"])]
    if data["importance"]:
        parts += ["<h2>Factor importance (Optuna fANOVA)</h2>",
                  _table([{"factor": k, "importance": v} for k, v in data["importance"].items()],
                         ["factor", "importance"])]
    if data["paired"]:
        parts += ["<h2>Paired comparisons (Holm-corrected)</h2>",
                  _table(data["paired"], ["factor", "level_a", "level_b", "pairs", "mean_diff", "d_z",
                                          "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm"])]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(a.name)} report</title>{_STYLE}</head><body>"
            + "\n".join(parts) + _CHECK + "</body></html>\n")

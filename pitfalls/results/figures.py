"""The report's figures (matplotlib, inline PNG data URIs): marginal effects, interaction
heatmaps and learning curves, from `comparison_data` and the results table."""

from __future__ import annotations

import base64
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pitfalls.config.metrics import selection_metric
from pitfalls.results.analysis import Analysis


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _xticks(ax, x, labels: list[str]) -> None:
    """Tick labels, slanted when long (a linked factor's `videos_per_batch=1, seq_len=64`)."""
    if max(map(len, labels), default=0) > 10:
        ax.set_xticks(x, labels, rotation=25, ha="right")
    else:
        ax.set_xticks(x, labels)


def figures(results: pa.Table, a: Analysis, data: dict) -> list[tuple[str, str]]:
    """(title, PNG data URI) of every figure of the report."""
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
    curve = f"curve_{selection_metric(a.metric)}"  # a test metric's epochs are its val_ counterpart's
    if curve not in results.column_names or not any(r[curve] for r in done):
        return figs
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, factor in zip(axes[0], a.factors):
        for level in sorted({r[factor] for r in done}, key=str):
            curves = [r[curve] for r in done if r[factor] == level and r[curve]]
            if not curves:
                continue
            length = min(map(len, curves))
            mean = np.mean([c[:length] for c in curves], axis=0)
            ax.plot(np.arange(1, length + 1), mean, marker="o", label=str(level))
        ax.set_title(factor)
        ax.set_xlabel("epoch")
        ax.set_ylabel(selection_metric(a.metric))
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle("Learning curves per level (mean over trials)", y=1.04)
    figs.append(("Learning curves", _png(fig)))
    return figs


def ribbon_figure(ribbons: list[dict]) -> str | None:
    """Ground truth above prediction, one pair of bars per video (a phase per colour)."""
    if not ribbons:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = ribbons[0]["phases"]
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20", len(names))
    fig, axes = plt.subplots(len(ribbons), 1, figsize=(9, 1.3 * len(ribbons) + 0.9), squeeze=False)
    for ax, r in zip(axes[:, 0], ribbons):
        ax.imshow(np.stack([r["truth"], r["prediction"]]), aspect="auto", cmap=cmap,
                  vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
        ax.set_yticks([0, 1], ["truth", "predicted"])
        ax.set_xticks([])
        ax.set_title(f"{r['arm']}: {r['config']} · {r['trial']} · {r['split']} {r['video']}",
                     fontsize="small", loc="left")
    axes[-1, 0].set_xlabel("frame")
    fig.legend(handles=[Patch(color=cmap(i), label=n) for i, n in enumerate(names)],
               loc="lower center", ncol=min(len(names), 4), fontsize="small", bbox_to_anchor=(0.5, -0.08))
    return _png(fig)

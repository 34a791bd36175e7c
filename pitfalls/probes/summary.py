"""All probes on one model and one clip, as flat metrics (for MLflow/results) and a table."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pitfalls.probes.core import (
    batch_dependence,
    has_batch_statistics,
    leakage,
    stale_statistics,
    train_eval_gap,
)
from pitfalls.probes.registry import PROBES


def probe_model(model: nn.Module, clip: torch.Tensor, labels: torch.Tensor | None,
                train_batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Probe `model` as it trains (train mode): flat `probe_*` metrics, booleans as 0/1.

    clip: (B, T, C, H, W) validation sequences (B >= 2 for batch dependence); labels (B, T).
    train_batches: clips for the population statistics of `stale_statistics`.
    """
    was_training = model.training
    model.train()
    try:
        leak = leakage(model, clip)
        dep = batch_dependence(model, clip)
        gap = train_eval_gap(model, [(clip, labels) if labels is not None else clip])
        out = {
            "probe_leak_train": float(leak.results["train"].flagged),
            "probe_leak_change_train": leak.results["train"].max_change,
            "probe_leak_eval": float(leak.results["eval"].flagged),
            "probe_leak_change_eval": leak.results["eval"].max_change,
            "probe_batch_dependent_train": float(dep.results["train"].flagged),
            "probe_batch_change_train": dep.results["train"].max_change,
            "probe_train_eval_output_gap": gap.mean_abs_output_change,
        }
        if gap.accuracy_gap is not None:
            out["probe_train_eval_accuracy_gap"] = gap.accuracy_gap
        if has_batch_statistics(model):
            stale = stale_statistics(model, train_batches)
            out["probe_stale_mean_shift"] = stale.max_mean_shift
            out["probe_stale_var_ratio"] = stale.max_var_ratio
        return out
    finally:
        model.train(was_training)


def probe_table(results: dict[str, float]) -> str:
    """A plain-text table of `probe_model`'s results."""
    lines = [f"{'probe':<28} {'verdict':<12} value"]
    for v in (v for probe in PROBES.values() for v in probe.verdicts):
        lines.append(f"{v.title:<28} {v.yes if results[v.flag] else v.no:<12} "
                     f"max |change| of past/own outputs = {results[v.value]:.3g}")
    gap = f"mean |train - eval output| = {results['probe_train_eval_output_gap']:.3g}"
    if "probe_train_eval_accuracy_gap" in results:
        gap += f", accuracy gap = {results['probe_train_eval_accuracy_gap']:+.3f}"
    lines.append(f"{'train/eval gap':<28} {'':<12} {gap}")
    if "probe_stale_mean_shift" in results:
        lines.append(f"{'stale BN statistics':<28} {'':<12} max mean shift = "
                     f"{results['probe_stale_mean_shift']:.3g} σ, max |log var ratio| = "
                     f"{results['probe_stale_var_ratio']:.3g}")
    else:
        lines.append(f"{'stale BN statistics':<28} {'n/a':<12} no layer uses batch statistics")
    return "\n".join(lines)

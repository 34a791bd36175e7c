"""Pitfall probes: does a model cheat through batch statistics, and how far apart are train and eval?

Each probe tests *behaviour*, not layer types, and leaves the model exactly as it found it
(mode, parameters and buffers restored bit for bit; RNG forked so dropout masks match). The
registry (`probes.registry`: names and result columns) imports no torch; the probes do.
"""

from __future__ import annotations

from importlib import import_module

_CORE = ("BatchDependence", "Leakage", "StaleStatistics", "TrainEvalGap", "batch_dependence",
         "leakage", "stale_statistics", "train_eval_gap")
__all__ = list(_CORE)


def __getattr__(name: str):
    if name in _CORE:
        return getattr(import_module("pitfalls.probes.core"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The per-worker training recipe, tasks and metrics; imports no Ray, Optuna, MLflow or pydantic.

The names below import torch on first use, so `pitfalls.train.checkpoint` (the checkpoint's
keys) can be read by the Tune driver without it.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {"make_batch": "pitfalls.models.inputs", "evaluate": "pitfalls.train.evaluation",
         "Distributed": "pitfalls.train.loop", "train": "pitfalls.train.run",
         "phase_scores": "pitfalls.train.metrics", "summarize_phase": "pitfalls.train.metrics",
         "AnticipationTask": "pitfalls.train.tasks", "PhaseTask": "pitfalls.train.tasks",
         "make_task": "pitfalls.train.tasks"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)

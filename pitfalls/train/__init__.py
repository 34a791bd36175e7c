"""The per-worker training loop, tasks and metrics; imports no Ray, Optuna or MLflow."""

from pitfalls.train.loop import Distributed, evaluate, make_batch, train
from pitfalls.train.metrics import phase_scores, summarize_phase
from pitfalls.train.tasks import AnticipationTask, PhaseTask, make_task

__all__ = ["AnticipationTask", "Distributed", "PhaseTask", "evaluate", "make_batch", "make_task",
           "phase_scores", "summarize_phase", "train"]

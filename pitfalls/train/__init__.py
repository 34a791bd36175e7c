"""The per-worker training recipe, tasks and metrics; imports no Ray, Optuna, MLflow or pydantic."""

from pitfalls.models.inputs import make_batch
from pitfalls.train.evaluation import evaluate
from pitfalls.train.loop import Distributed, train
from pitfalls.train.metrics import phase_scores, summarize_phase
from pitfalls.train.tasks import AnticipationTask, PhaseTask, make_task

__all__ = ["AnticipationTask", "Distributed", "PhaseTask", "evaluate", "make_batch", "make_task",
           "phase_scores", "summarize_phase", "train"]

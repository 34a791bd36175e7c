"""The per-worker training loop and metrics; imports no Ray, Optuna or MLflow."""

from pitfalls.train.loop import Distributed, evaluate, train
from pitfalls.train.metrics import summarize, video_scores

__all__ = ["Distributed", "evaluate", "train", "summarize", "video_scores"]

"""Pitfall probes: does a model cheat through batch statistics, and how far apart are train and eval?

Each probe tests *behaviour*, not layer types, and leaves the model exactly as it found it
(mode, parameters and buffers restored bit for bit; RNG forked so dropout masks match).
"""

from pitfalls.probes.core import (BatchDependence, Leakage, StaleStatistics, TrainEvalGap,
                                  batch_dependence, leakage, stale_statistics, train_eval_gap)

__all__ = ["Leakage", "BatchDependence", "TrainEvalGap", "StaleStatistics", "leakage",
           "batch_dependence", "train_eval_gap", "stale_statistics"]

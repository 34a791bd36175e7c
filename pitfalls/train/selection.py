"""Which epoch's weights a trial reports on the test split: the best on validation, or the last.

`Selection` follows the study's selection metric (`MetricSpec.selection`: the validation metric,
or the `val_` counterpart of a `test_` one) epoch by epoch and keeps a CPU copy of the weights it
picks; it is part of the checkpoint, so a resumed trial selects exactly what an uninterrupted one
would. Ties and undefined (NaN) values keep the earlier epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Selection:
    metric: str
    mode: str  # "max" | "min"
    rule: str  # "best" | "last"
    epoch: int = 0
    value: float = math.nan
    weights: dict | None = None  # the selected epoch's state dict (CPU); None under "last"

    def better(self, value: float) -> bool:
        if self.epoch == 0:
            return True
        if math.isnan(value):
            return False
        if math.isnan(self.value):
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def offer(self, epoch: int, metrics: dict, model: torch.nn.Module) -> None:
        """Called after each epoch's validation."""
        value = float(metrics.get(self.metric, math.nan))
        if self.rule == "last":
            self.epoch, self.value = epoch, value
        elif self.better(value):
            self.epoch, self.value = epoch, value
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def state_dict(self) -> dict:
        """Plain, for a checkpoint: the epoch (int), its value (float) and weights (a state
        dict of CPU tensors, or None)."""
        return {"epoch": int(self.epoch), "value": float(self.value), "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.value = int(state["epoch"]), float(state["value"])
        self.weights = state["weights"]


class selected_weights:
    """Context: the model holds the selected weights inside, its own (the last epoch's) after."""

    def __init__(self, model: torch.nn.Module, selection: Selection):
        self.model, self.selection = model, selection
        self.kept: dict | None = None

    def __enter__(self) -> torch.nn.Module:
        if self.selection.weights is not None:
            self.kept = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.selection.weights)
        return self.model

    def __exit__(self, *exc) -> None:
        if self.kept is not None:
            self.model.load_state_dict(self.kept)

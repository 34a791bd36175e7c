"""The temporal-head registry: every head a study can name, with its options.

A head is one options dataclass here (the study's `model.temporal_head` entry for that type,
validated from its field annotations) whose `build` makes the torch module (`temporal.py`);
a head whose options suit some tasks only says so in `task_problems(task)` (study validation).
`HEADS` is derived from the classes below; the trial parameter `temporal_head`, the study
schema and the model builder read it. Importing this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pitfalls.fields import FORBID_EXTRA, Float, Int, Problem

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LSTMHead:
    """Causal LSTM (the papers' CNN-LSTM; 512 units in their code)."""

    __pydantic_config__ = FORBID_EXTRA
    type: Literal["lstm"] = "lstm"
    hidden_size: Annotated[int, Int(ge=1)] = 64

    def build(self, in_features: int, num_classes: int) -> "nn.Module":
        from pitfalls.models.temporal import CausalLSTMHead

        return CausalLSTMHead(in_features, self.hidden_size, num_classes)


@dataclass(frozen=True)
class GRUHead:
    """Causal GRU: a lighter recurrent head with a single state tensor."""

    __pydantic_config__ = FORBID_EXTRA
    type: Literal["gru"] = "gru"
    hidden_size: Annotated[int, Int(ge=1)] = 64

    def build(self, in_features: int, num_classes: int) -> "nn.Module":
        from pitfalls.models.temporal import CausalGRUHead

        return CausalGRUHead(in_features, self.hidden_size, num_classes)


@dataclass(frozen=True)
class TCNHead:
    """Causal multi-stage TCN (the seeds' MS-TCN / TeCNO settings): `stages` stages of `layers`
    dilated residual layers (dilation 2^i), each stage after the first refining the previous
    one's softmax; left padding only, so frame t sees frames <= t. Trains on the sum of the
    task's loss over its stages, plus MS-TCN's smoothing term x `smoothing` (MS-TCN: 0.15;
    phase only)."""

    __pydantic_config__ = FORBID_EXTRA
    type: Literal["tcn"] = "tcn"
    stages: Annotated[int, Int(ge=1)] = 2
    layers: Annotated[int, Int(ge=1, le=16)] = 9  # receptive field (kernel-1) x (2^layers - 1) + 1 per stage
    feature_maps: Annotated[int, Int(ge=1)] = 64
    kernel_size: Annotated[int, Int(ge=2)] = 3
    dropout: Annotated[float, Float(ge=0, lt=1)] = 0.5  # MS-TCN's, after each layer's 1x1
    smoothing: Annotated[float, Float(ge=0)] = 0.0

    def build(self, in_features: int, num_classes: int) -> "nn.Module":
        from pitfalls.models.temporal import CausalTCNHead

        return CausalTCNHead(in_features, num_classes, stages=self.stages, layers=self.layers,
                             feature_maps=self.feature_maps, kernel_size=self.kernel_size,
                             dropout=self.dropout, smoothing=self.smoothing)

    def task_problems(self, task: str) -> list[Problem]:
        """The smoothing term treats the outputs as one softmax's logits: phase logits only
        (anticipation's outputs mix regressions and per-instrument class logits)."""
        if self.smoothing and task != "phase":
            return [Problem("smoothing", self.smoothing, f"applies to task phase only (its outputs "
                            f"are one softmax's logits), not {task}; set it to 0")]
        return []


HEADS: dict[str, type] = {cls.type: cls for cls in (LSTMHead, GRUHead, TCNHead)}
HEAD_NAMES = tuple(HEADS)

"""The temporal-head registry: every head a study can name, with its options.

A head is one options dataclass here (the study's `model.temporal_head` entry for that type,
validated from its field annotations) whose `build` makes the torch module (`temporal.py`).
`HEADS` is derived from the classes below; the trial parameter `temporal_head`, the study
schema and the model builder read it. Importing this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pitfalls.fields import FORBID_EXTRA, Int

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


HEADS: dict[str, type] = {cls.type: cls for cls in (LSTMHead, GRUHead)}
HEAD_NAMES = tuple(HEADS)

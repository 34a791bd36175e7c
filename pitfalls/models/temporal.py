"""Temporal heads (torch modules) and the lanes of their carried state.

A head maps per-frame features (B, T, F) and a carried state to per-frame outputs (B, T, C) and
the state after the last frame. The state is the head's own business: a pytree of tensors
(an LSTM's (h, c), a GRU's h) whose lanes, one per sequence of the batch, lie along the head's
`lanes.dim`. The training loop, the step and the evaluation select, join, reset and move lanes
through `Lanes` and never unpack a state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map

State = Any  # a pytree of tensors, opaque outside its head


@dataclass(frozen=True)
class Lanes:
    """Lane operations on a head's state; lanes lie along dimension `dim` of every tensor."""

    dim: int

    def select(self, state: State | None, part: slice) -> State | None:
        if state is None:
            return None
        index = (slice(None),) * self.dim + (part,)
        return tree_map(lambda t: t[index], state)

    def join(self, states: list[State]) -> State:
        return tree_map(lambda *ts: torch.cat(ts, dim=self.dim), *states)

    def reset(self, state: State | None, reset: np.ndarray, device: torch.device) -> State | None:
        """Zero the lanes where `reset` is true (a lane that starts a new video); detach all
        (truncated BPTT: gradients stop at the chunk boundary, the information flows on)."""
        if state is None:
            return None
        keep = torch.from_numpy(~reset).to(device)

        def apply(t: torch.Tensor) -> torch.Tensor:
            shape = [1] * t.dim()
            shape[self.dim] = -1
            return t.detach() * keep.to(t.dtype).view(shape)

        return tree_map(apply, state)


def state_to(state: State | None, device: torch.device | str) -> State | None:
    """A state (detached) on `device`: checkpoints keep it on the CPU."""
    return None if state is None else tree_map(lambda t: t.detach().to(device), state)


class CausalLSTMHead(nn.Module):
    """Unidirectional LSTM over per-frame features: online, no access to future frames."""

    lanes = Lanes(dim=1)  # (h, c), each (layers, B, hidden)

    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.lstm = nn.LSTM(in_features, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, feats: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        out, state = self.lstm(feats, state)
        return self.fc(out), state


class CausalGRUHead(nn.Module):
    """Unidirectional GRU over per-frame features: one state tensor instead of the LSTM's two."""

    lanes = Lanes(dim=1)  # h, (layers, B, hidden)

    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.gru = nn.GRU(in_features, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, feats: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        out, state = self.gru(feats, state)
        return self.fc(out), state

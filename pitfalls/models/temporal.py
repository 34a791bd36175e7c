"""Temporal heads (torch modules) and the lanes of their carried state.

A head maps per-frame features (B, T, F) and a carried state to per-frame outputs (B, T, C) and
the state after the last frame. The state is the head's own business: a pytree of tensors
(an LSTM's (h, c), a GRU's h) whose lanes, one per sequence of the batch, lie along the head's
`lanes.dim`. The training loop, the step and the evaluation select, join, reset and move lanes
through `Lanes` and never unpack a state. A head's training loss is the task's loss on its output
unless the head defines its own (`training_loss`: a multi-stage TCN's sum over its stages).
"""

from __future__ import annotations

from collections.abc import Callable
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
        if all(s is None for s in states):  # a stateless head (the frame classifier)
            return None
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


LossOf = Callable[[torch.Tensor], torch.Tensor]  # an output (B, T, C) -> the task's loss on its labels


def training_loss(head: nn.Module, feats: torch.Tensor, state: State | None,
                  loss: LossOf) -> tuple[torch.Tensor, State]:
    """The head's training loss on `feats` (B, T, F) and its new state. A head whose loss is not
    the task's loss on its output (a multi-stage TCN: every stage's) defines the hook
    `training_loss(feats, state, loss)`; any other head is the task's loss on its output."""
    hook = getattr(head, "training_loss", None)
    if hook is not None:
        return hook(feats, state, loss)
    out, state = head(feats, state)
    return loss(out), state


class _CausalResidual(nn.Module):
    """MS-TCN's dilated residual layer, causal: x + dropout(1x1(relu(dilated conv(x)))), the
    dilated convolution seeing the frame itself and the `context` frames before it only."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.context = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T) and the `context` input frames before it (zeros at a video's start) ->
        the layer's output and its next `past`: the last `context` input frames."""
        window = torch.cat([past.to(x.dtype), x], dim=2)
        out = self.dropout(self.mix(torch.relu(self.conv(window))))
        return x + out, window[:, :, window.shape[2] - self.context:]


class _Stage(nn.Module):
    """One MS-TCN stage: 1x1 in, `layers` causal residual layers (dilation 2^i), 1x1 out."""

    def __init__(self, in_dim: int, channels: int, out_dim: int, layers: int, kernel_size: int,
                 dropout: float):
        super().__init__()
        self.inp = nn.Conv1d(in_dim, channels, 1)
        self.layers = nn.ModuleList(_CausalResidual(channels, kernel_size, 2 ** i, dropout)
                                    for i in range(layers))
        self.out = nn.Conv1d(channels, out_dim, 1)

    def forward(self, x: torch.Tensor, past: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, new = self.inp(x), []
        for layer, p in zip(self.layers, past):
            h, p = layer(h, p)
            new.append(p)
        return self.out(h), new


class CausalTCNHead(nn.Module):
    """Causal multi-stage TCN (MS-TCN, Farha & Gall 2019, with left padding only as in TeCNO,
    Czempiel et al. 2020): stage 1 maps the features to outputs, each further stage refines the
    softmax of the previous stage's outputs (over the output dimension, as MS-TCN does).

    State: for every dilated layer of every stage (stage-major), its last (kernel-1)*dilation
    input frames, (B, feature_maps, (kernel-1)*dilation); None means zeros (a video's start,
    the same zeros a reset lane gets). Carrying it from chunk to chunk computes exactly what one
    pass over the whole video would. `forward` stores nothing on the module: it may be called any
    number of times before a loss."""

    lanes = Lanes(dim=0)

    def __init__(self, in_features: int, num_classes: int, *, stages: int = 2, layers: int = 9,
                 feature_maps: int = 64, kernel_size: int = 3, dropout: float = 0.5,
                 smoothing: float = 0.0):
        super().__init__()
        self.stages = nn.ModuleList(
            _Stage(in_features if s == 0 else num_classes, feature_maps, num_classes, layers,
                   kernel_size, dropout) for s in range(stages))
        self.smoothing = smoothing

    def _zeros(self, feats: torch.Tensor) -> State:
        b, dtype = feats.shape[0], feats.dtype
        return tuple(feats.new_zeros(b, layer.conv.in_channels, layer.context, dtype=dtype)
                     for stage in self.stages for layer in stage.layers)

    def stage_outputs(self, feats: torch.Tensor, state: State | None = None) -> tuple[list[torch.Tensor], State]:
        """Every stage's outputs (B, T, C), first to last, and the new state."""
        past = list(self._zeros(feats) if state is None else state)
        x, outs, new = feats.transpose(1, 2), [], []
        for stage in self.stages:
            n = len(stage.layers)
            y, p = stage(x if not outs else outs[-1].softmax(1), past[:n])
            past = past[n:]
            outs.append(y)
            new.extend(p)
        return [y.transpose(1, 2) for y in outs], tuple(new)

    def forward(self, feats: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        outs, state = self.stage_outputs(feats, state)
        return outs[-1], state

    def training_loss(self, feats: torch.Tensor, state: State | None, loss: LossOf) -> tuple[torch.Tensor, State]:
        outs, state = self.stage_outputs(feats, state)
        return multi_stage_loss(outs, loss, self.smoothing), state


def multi_stage_loss(outs: list[torch.Tensor], loss: LossOf, smoothing: float = 0.0) -> torch.Tensor:
    """MS-TCN's loss: the sum over stages of the task's loss, each plus `smoothing` x the
    truncated MSE (clamped at tau^2 = 16) between consecutive frames' log-probabilities (the
    gradient flows through the later frame only). The smoothing treats the outputs as one softmax's logits:
    phase logits (validation refuses it for anticipation)."""
    total = sum(loss(y) for y in outs)
    if smoothing and outs[0].shape[1] > 1:
        for y in outs:
            logp = y.float().log_softmax(-1)
            step = (logp[:, 1:] - logp[:, :-1].detach()) ** 2
            total = total + smoothing * step.clamp(max=16.0).mean()
    return total

"""The frame classifier of `frame_only` trials and of a two-stage trial's first stage: a linear
layer on each frame's CNN features, no temporal context. It takes and returns a head state
(always None) so that the training step, the evaluation and the probes run it like any head."""

from __future__ import annotations

import torch
from torch import nn

from pitfalls.models.temporal import Lanes, State


class FrameClassifier(nn.Module):
    lanes = Lanes(dim=0)  # no state: every lane operation sees None

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, None]:
        return self.fc(feats), None

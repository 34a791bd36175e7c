"""CNN + temporal head, trained end to end: per-frame phase logits for (B, T, C, H, W) input."""

from __future__ import annotations

import torch
from torch import nn

from pitfalls.models.backbone import create_backbone, feature_dim, freeze_stages
from pitfalls.models.norms import NormOptions, convert_norms

State = tuple[torch.Tensor, torch.Tensor]


class CausalLSTMHead(nn.Module):
    """Unidirectional LSTM over per-frame features: online, no access to future frames."""

    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.lstm = nn.LSTM(in_features, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, feats: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        out, state = self.lstm(feats, state)
        return self.fc(out), state


class VideoModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        b, t = x.shape[:2]
        # All B*T frames go through the CNN as one batch: with BN, their statistics mix.
        feats = self.backbone(x.flatten(0, 1)).view(b, t, -1)
        return self.head(feats, state)


def build_model(backbone: str, norm: str, frozen_stages: int, num_classes: int,
                hidden_size: int = 64, groups: int = 8, weights: str | None = None,
                whitening_group_size: int = 16) -> VideoModel:
    """Backbone (weights loaded first) -> norm conversion -> stage freezing -> LSTM head."""
    cnn = create_backbone(backbone, weights, norm)
    cnn = convert_norms(cnn, norm, NormOptions(groups, whitening_group_size))
    freeze_stages(cnn, frozen_stages)
    return VideoModel(cnn, CausalLSTMHead(feature_dim(cnn), hidden_size, num_classes))

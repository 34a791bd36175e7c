"""The layers the norm registry builds that torch and timm do not have."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EvalModeBatchNorm2d(nn.BatchNorm2d):
    """BN that always normalizes with its running statistics, also in train mode.

    The affine (weight, bias) still trains; the statistics never update. This is the papers'
    `--bn_off` setting (`batch_eval`): no batch statistics, so no leakage between frames.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


class NormAct(nn.Module):
    """A replacement norm followed by the dropout and activation its fused original carried."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))

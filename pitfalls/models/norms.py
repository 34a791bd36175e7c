"""Normalization catalog: one name -> constructor table and one conversion function.

Constructors take the channel count first (timm's convention) so they swap for each other.
`convert_norms` replaces every BatchNorm2d in a backbone, after creation, with the chosen norm;
where the new layer is BN-shaped it inherits the old affine and running statistics, so a
converted pretrained model keeps what it learned.
"""

from __future__ import annotations

import math
from typing import Callable

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


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    # Rule when channels are not divisible by the requested groups: use gcd(channels, groups),
    # the largest group count <= `groups` that divides both.
    return nn.GroupNorm(math.gcd(channels, groups), channels)


def _layer_norm(channels: int, groups: int) -> nn.Module:
    from timm.layers import LayerNorm2d  # channels-only LN over (N, C, H, W), as in ConvNeXt

    return LayerNorm2d(channels)


def _frozen_batch(channels: int, groups: int) -> nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d  # the class timm's freeze helpers use

    return FrozenBatchNorm2d(channels)


NormCtor = Callable[[int, int], nn.Module]

NORMS: dict[str, NormCtor] = {
    "batch": lambda c, g: nn.BatchNorm2d(c),
    "batch_eval": lambda c, g: EvalModeBatchNorm2d(c),
    "frozen_batch": _frozen_batch,
    "group": _group_norm,
    "layer": _layer_norm,
    "instance": lambda c, g: nn.GroupNorm(c, c),  # per-channel, per-sample: InstanceNorm + affine
    "none": lambda c, g: nn.Identity(),
}
NORM_NAMES = tuple(NORMS)
BATCH_DEPENDENT = frozenset({"batch"})  # norms whose train-mode output depends on other samples


def _copy_bn_state(src: nn.BatchNorm2d, dst: nn.Module) -> None:
    """Carry affine and running stats into a BN-shaped replacement (BN, eval-BN, FrozenBN)."""
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if s is not None and d is not None and s.shape == d.shape:
                d.copy_(s)


def convert_norms(module: nn.Module, norm: str, groups: int = 8) -> nn.Module:
    """Replace every `nn.BatchNorm2d` under `module` with `norm`; returns the (new) module."""
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is unknown; valid choices: {', '.join(NORM_NAMES)}")
    if norm == "batch":
        return module
    if isinstance(module, nn.BatchNorm2d):
        new = NORMS[norm](module.num_features, groups)
        _copy_bn_state(module, new)
        return new
    for name, child in module.named_children():
        new_child = convert_norms(child, norm, groups)
        if new_child is not child:
            setattr(module, name, new_child)
    return module

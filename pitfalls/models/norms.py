"""Normalization catalog: one name -> constructor table and one conversion function.

Constructors take the channel count first (timm's convention) so they swap for each other.
`convert_norms` replaces every channel norm of a CNN after creation — `nn.BatchNorm2d` and
`SyncBatchNorm`, timm's fused `BatchNormAct2d` / `GroupNormAct`, `nn.GroupNorm`, and timm's
channels-first `LayerNorm2d` — with the chosen norm. A fused layer's dropout and activation are
kept (the replacement is wrapped in `NormAct`). Where the new layer is BN-shaped it inherits the
old affine and running statistics, so a converted pretrained model keeps what it learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pitfalls.models.whitening import DBN, SWBN, IterNorm


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


@dataclass(frozen=True)
class NormOptions:
    groups: int = 8  # GroupNorm groups
    whitening_group_size: int = 16  # channels whitened together (iternorm, swbn, dbn)


def _group_norm(channels: int, o: NormOptions) -> nn.GroupNorm:
    # Rule when channels are not divisible by the requested groups: use gcd(channels, groups),
    # the largest group count <= `groups` that divides both.
    return nn.GroupNorm(math.gcd(channels, o.groups), channels)


def _layer_norm(channels: int, o: NormOptions) -> nn.Module:
    from timm.layers import LayerNorm2d  # channels-only LN over (N, C, H, W), as in ConvNeXt

    return LayerNorm2d(channels)


def _frozen_batch(channels: int, o: NormOptions) -> nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d  # the class timm's freeze helpers use

    return FrozenBatchNorm2d(channels)


NormCtor = Callable[[int, NormOptions], nn.Module]

NORMS: dict[str, NormCtor] = {
    "batch": lambda c, o: nn.BatchNorm2d(c),
    "batch_eval": lambda c, o: EvalModeBatchNorm2d(c),
    "frozen_batch": _frozen_batch,
    "sync_batch": lambda c, o: nn.SyncBatchNorm(c),  # one process: plain BN (torch falls back)
    "group": _group_norm,
    "layer": _layer_norm,
    "instance": lambda c, o: nn.GroupNorm(c, c),  # per-channel, per-sample: InstanceNorm + affine
    "none": lambda c, o: nn.Identity(),
    "iternorm": lambda c, o: IterNorm(c, o.whitening_group_size),
    "swbn": lambda c, o: SWBN(c, o.whitening_group_size),
    "dbn": lambda c, o: DBN(c, o.whitening_group_size),
}
NORM_NAMES = tuple(NORMS)
WHITENING = frozenset({"iternorm", "swbn", "dbn"})
# Norms whose train-mode output for one sample depends on the other samples of the batch.
BATCH_DEPENDENT = frozenset({"batch", "sync_batch"}) | WHITENING


def _source_types() -> tuple[type, ...]:
    from timm.layers import LayerNorm2d

    return (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, LayerNorm2d)


def _channels(module: nn.Module) -> int:
    for attr in ("num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(module.normalized_shape[0])  # LayerNorm2d


def _copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Carry affine and running statistics into the replacement where shapes agree."""
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if isinstance(s, torch.Tensor) and isinstance(d, torch.Tensor) and s.shape == d.shape:
                d.copy_(s)


def _replacement(module: nn.Module, norm: str, options: NormOptions) -> nn.Module:
    if norm == "frozen_batch" and isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(module)  # BN -> FrozenBN, BatchNormAct2d -> FrozenBatchNormAct2d
    new = NORMS[norm](_channels(module), options)
    _copy_state(module, new)
    if isinstance(getattr(module, "act", None), nn.Module):  # a fused norm + activation
        return NormAct(new, getattr(module, "drop", nn.Identity()), module.act)
    return new


def _already(module: nn.Module, norm: str) -> bool:
    """Is `module` already exactly the target norm (so converting would only lose state)?"""
    if norm == "batch":
        return type(module) is nn.BatchNorm2d or type(module).__name__ == "BatchNormAct2d"
    return False


def convert_norms(module: nn.Module, norm: str, options: NormOptions = NormOptions()) -> nn.Module:
    """Replace every channel norm under `module` with `norm`; returns the (new) module."""
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is unknown; valid choices: {', '.join(NORM_NAMES)}")
    if isinstance(module, _source_types()):
        return module if _already(module, norm) else _replacement(module, norm, options)
    for name, child in module.named_children():
        new_child = convert_norms(child, norm, options)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _is_target(m: nn.Module, norm: str) -> bool:
    from timm.layers import FrozenBatchNormAct2d, LayerNorm2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    t = type(m)
    return {
        "batch": t is nn.BatchNorm2d or t.__name__ == "BatchNormAct2d",
        "batch_eval": t is EvalModeBatchNorm2d,
        "frozen_batch": t in (FrozenBatchNorm2d, FrozenBatchNormAct2d),
        "sync_batch": t is nn.SyncBatchNorm,
        "group": t is nn.GroupNorm,
        "instance": t is nn.GroupNorm and m.num_groups == m.num_channels,
        "layer": t is LayerNorm2d,
        "none": False,
        "iternorm": t is IterNorm,
        "swbn": t is SWBN,
        "dbn": t is DBN,
    }[norm]


def stray_norms(module: nn.Module, norm: str) -> list[str]:
    """Names of normalization layers that are not the `norm` conversion's output (want: none)."""
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    kinds = (*_source_types(), nn.LayerNorm, FrozenBatchNorm2d, FrozenBatchNormAct2d, IterNorm,
             SWBN, DBN)
    return [n for n, m in module.named_modules() if isinstance(m, kinds) and not _is_target(m, norm)]

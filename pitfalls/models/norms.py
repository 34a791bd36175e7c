"""The norm registry: every normalization a backbone can be given, declared once with what the
rest of the platform needs to know about it; and the conversion of a CNN's norms.

Each `Norm` carries its constructor (channel count first, timm's convention, so they swap for
each other), the layer types it produces (to recognise it in a model), and its properties:
`batch_dependent` (in train mode a sample's output depends on the other samples of the batch:
the pitfall), `running_stats` (keeps running estimates that eval mode uses) and `precise_bn`
(PreciseBN recomputes those estimates). Validation, the probes, PreciseBN, the cheat gap's
diagnosis and the support table all read these entries; adding a norm is one entry here (plus
its layer, if torch and timm have none).

`convert_norms` replaces every channel norm of a CNN after creation — `nn.BatchNorm2d` and
`SyncBatchNorm`, timm's fused `BatchNormAct2d` / `GroupNormAct`, `nn.GroupNorm`, and timm's
channels-first `LayerNorm2d` — with the chosen norm. A fused layer's dropout and activation are
kept (the replacement is wrapped in `NormAct`). Where the new layer is BN-shaped it inherits the
old affine and running statistics. With pretrained weights, each entry's `kind` says which
pretrained norm layers it keeps (every BN variant keeps BN weights; `group` a GN model's,
`layer` ConvNeXt's); layers of another kind start from scratch (`convert_norms(pretrained=True)`).

Importing this module imports no torch (validation reads the registry); torch, timm and
torchvision are imported when a norm is built or a model converted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class NormOptions:
    groups: int = 8  # GroupNorm groups
    whitening_group_size: int = 16  # channels whitened together (iternorm, swbn, dbn)


@dataclass(frozen=True)
class Norm:
    name: str
    build: Callable[[int, NormOptions], "nn.Module"]
    layers: Callable[[], tuple[type, ...]]  # the exact types `build` (or the conversion) makes
    batch_dependent: bool
    running_stats: bool
    precise_bn: bool = False
    doc: str = ""
    same_as: Callable[["nn.Module"], bool] = lambda m: True  # narrows `layers` (instance)
    # the pretrained normalization this level keeps (statistics and affine carried over); its
    # own name unless given: every BN variant keeps BN weights
    keeps: str = ""

    @property
    def kind(self) -> str:
        """The kind of pretrained norm layers this level keeps (`keeps`, else its name)."""
        return self.keeps or self.name

    def is_layer(self, module: "nn.Module") -> bool:
        """Is `module` a layer of this norm (what converting to it produced)?"""
        return type(module) in self.layers() and self.same_as(module)


def _nn():
    from torch import nn

    return nn


def _layers():
    from pitfalls.models import norm_layers

    return norm_layers


def _timm_layers():
    import timm.layers

    return timm.layers


def _whitening():
    from pitfalls.models import whitening

    return whitening


def _frozen_bn_types() -> tuple[type, ...]:
    from torchvision.ops.misc import FrozenBatchNorm2d  # the class timm's freeze helpers use

    return FrozenBatchNorm2d, _timm_layers().FrozenBatchNormAct2d


def _group_norm(channels: int, o: NormOptions) -> "nn.Module":
    # Rule when channels are not divisible by the requested groups: use gcd(channels, groups),
    # the largest group count <= `groups` that divides both.
    return _nn().GroupNorm(math.gcd(channels, o.groups), channels)


def _frozen_batch(channels: int, o: NormOptions) -> "nn.Module":
    from torchvision.ops.misc import FrozenBatchNorm2d

    return FrozenBatchNorm2d(channels)


_REGISTRY = [
    Norm("batch", lambda c, o: _nn().BatchNorm2d(c),
         lambda: (_nn().BatchNorm2d, _timm_layers().BatchNormAct2d),
         batch_dependent=True, running_stats=True, precise_bn=True,
         doc="BatchNorm: batch statistics in training, running statistics in eval"),
    Norm("batch_eval", lambda c, o: _layers().EvalModeBatchNorm2d(c),
         lambda: (_layers().EvalModeBatchNorm2d,), batch_dependent=False, running_stats=True,
         keeps="batch",
         doc="BN that always uses its running statistics; the affine trains (the papers' --bn_off)"),
    Norm("frozen_batch", _frozen_batch, _frozen_bn_types, batch_dependent=False, running_stats=True,
         keeps="batch", doc="FrozenBN: fixed statistics and affine"),
    Norm("sync_batch", lambda c, o: _nn().SyncBatchNorm(c), lambda: (_nn().SyncBatchNorm,),
         batch_dependent=True, running_stats=True, precise_bn=True, keeps="batch",
         doc="BN with statistics over all DDP workers (GPUs; one process: plain BN)"),
    Norm("group", _group_norm, lambda: (_nn().GroupNorm,), batch_dependent=False,
         running_stats=False, doc="GroupNorm"),
    Norm("layer", lambda c, o: _timm_layers().LayerNorm2d(c), lambda: (_timm_layers().LayerNorm2d,),
         batch_dependent=False, running_stats=False, doc="channels-only LayerNorm, as in ConvNeXt"),
    Norm("instance", lambda c, o: _nn().GroupNorm(c, c), lambda: (_nn().GroupNorm,),
         batch_dependent=False, running_stats=False, doc="per-channel, per-sample: InstanceNorm + affine",
         same_as=lambda m: m.num_groups == m.num_channels),
    Norm("none", lambda c, o: _nn().Identity(), lambda: (), batch_dependent=False,
         running_stats=False, doc="no normalization"),
    Norm("iternorm", lambda c, o: _whitening().IterNorm(c, o.whitening_group_size),
         lambda: (_whitening().IterNorm,), batch_dependent=True, running_stats=True,
         doc="IterNorm whitening (Newton iterations)"),
    Norm("swbn", lambda c, o: _whitening().SWBN(c, o.whitening_group_size),
         lambda: (_whitening().SWBN,), batch_dependent=True, running_stats=True,
         doc="stochastic whitening BN"),
    Norm("dbn", lambda c, o: _whitening().DBN(c, o.whitening_group_size),
         lambda: (_whitening().DBN,), batch_dependent=True, running_stats=True,
         doc="decorrelated BN (ZCA)"),
]
NORMS: dict[str, Norm] = {n.name: n for n in _REGISTRY}
NORM_NAMES = tuple(NORMS)
# Norms whose train-mode output for one sample depends on the other samples of the batch.
BATCH_DEPENDENT = frozenset(n.name for n in _REGISTRY if n.batch_dependent)


def keeping(kinds: Iterable[str]) -> tuple[str, ...]:
    """The norm levels that keep pretrained norm layers of all these kinds (`Norm.kind`): with
    BN weights batch, batch_eval, frozen_batch, sync_batch; with none (norm-free) every level."""
    kinds = set(kinds)
    return tuple(n.name for n in _REGISTRY if kinds <= {n.kind})


# ---------------------------------------------------------------------------------------------
# Conversion (imports torch when called)
# ---------------------------------------------------------------------------------------------


def _source_types() -> tuple[type, ...]:
    """What a conversion replaces: every channel norm of timm's CNNs."""
    nn = _nn()
    return (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, _timm_layers().LayerNorm2d)


def _channels(module: "nn.Module") -> int:
    for attr in ("num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(module.normalized_shape[0])  # LayerNorm2d


def _copy_state(src: "nn.Module", dst: "nn.Module") -> None:
    """Carry affine and running statistics into the replacement where shapes agree."""
    import torch

    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if isinstance(s, torch.Tensor) and isinstance(d, torch.Tensor) and s.shape == d.shape:
                d.copy_(s)


def _replacement(module: "nn.Module", norm: str, options: NormOptions,
                 fresh: bool = False) -> "nn.Module":
    """The `norm` layer replacing `module`: with its state where shapes agree, or `fresh`."""
    nn = _nn()
    if norm == "frozen_batch" and isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not fresh:
        # BN -> FrozenBN, BatchNormAct2d -> FrozenBatchNormAct2d
        return _timm_layers().freeze_batch_norm_2d(module)
    new = NORMS[norm].build(_channels(module), options)
    if not fresh:
        _copy_state(module, new)
    if isinstance(getattr(module, "act", None), nn.Module):  # a fused norm + activation
        return _layers().NormAct(new, getattr(module, "drop", nn.Identity()), module.act)
    return new


def _convert_layer(module: "nn.Module", norm: str, options: NormOptions,
                   pretrained: bool) -> "nn.Module":
    if norm == "batch" and NORMS["batch"].is_layer(module):
        return module  # already exactly the target BN: converting would only lose its state
    if pretrained:
        kind = norm_kind(module)
        if kind == norm:
            return module  # the weights' own normalization (its groups, eps), kept as it is
        if kind != NORMS[norm].kind:
            return _replacement(module, norm, options, fresh=True)
    return _replacement(module, norm, options)


def convert_norms(module: "nn.Module", norm: str, options: NormOptions = NormOptions(), *,
                  pretrained: bool = False) -> "nn.Module":
    """Replace every channel norm under `module` with `norm`; returns the (new) module.

    `pretrained`: the layers hold pretrained weights. A layer that already is `norm` is kept as
    it is (e.g. resnet50_gn's 32 groups, whatever `options.groups` says); one of the kind `norm`
    keeps is converted with its state (BN -> FrozenBN); any other kind starts from scratch (a
    freshly initialized layer: another kind's affine means nothing here). Without it every layer
    is converted, carrying state where shapes agree (random weights: as before pretrained
    weights existed).
    """
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is unknown; valid choices: {', '.join(NORM_NAMES)}")
    if isinstance(module, _source_types()):
        return _convert_layer(module, norm, options, pretrained)
    for name, child in module.named_children():
        new_child = convert_norms(child, norm, options, pretrained=pretrained)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def norm_kind(module: "nn.Module") -> str | None:
    """The kind of norm `module` is (`Norm.kind` of the first registry entry whose layer types
    it is an instance of: timm's fused and subclassed layers included), or None."""
    for n in _REGISTRY:
        if isinstance(module, n.layers()) and n.same_as(module):
            return n.kind
    return None


def norm_kinds(module: "nn.Module") -> tuple[str, ...]:
    """The kinds of the channel norms a CNN holds (what its pretrained weights normalize with;
    () for a norm-free net)."""
    return tuple(sorted({norm_kind(m) for m in module.modules() if isinstance(m, _source_types())}))


def replaced_norms(module: "nn.Module", norm: str) -> list[str]:
    """Names of the channel norms that converting to `norm` replaces by another kind (the layers
    whose pretrained state is lost: they start from scratch)."""
    kind = NORMS[norm].kind
    return [name for name, m in module.named_modules()
            if isinstance(m, _source_types()) and norm_kind(m) != kind]


def norm_layer_types() -> tuple[type, ...]:
    """Every normalization layer type the registry or a timm CNN can hold."""
    known = {t for n in _REGISTRY for t in n.layers()}
    return (*_source_types(), _nn().LayerNorm, *sorted(known, key=lambda t: t.__qualname__))


def stray_norms(module: "nn.Module", norm: str) -> list[str]:
    """Names of normalization layers that are not the `norm` conversion's output (want: none)."""
    kinds, target = norm_layer_types(), NORMS[norm]
    return [n for n, m in module.named_modules() if isinstance(m, kinds) and not target.is_layer(m)]


def layers_of(module: "nn.Module", predicate: Callable[[Norm], bool]) -> list[tuple[str, "nn.Module"]]:
    """(name, layer) of every norm layer whose registry entry satisfies `predicate`, e.g. the
    layers PreciseBN recomputes (`lambda n: n.precise_bn`)."""
    chosen = [n for n in _REGISTRY if predicate(n)]
    return [(name, m) for name, m in module.named_modules() if any(n.is_layer(m) for n in chosen)]

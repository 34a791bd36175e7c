"""timm backbones: creation (never downloading), structure checks, and stage freezing."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

# Families whose norm conversion is implemented and tested (widened by later issues).
SUPPORTED_FAMILIES = ("ResNet",)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str = ""
    num_stages: int = 0
    num_features: int = 0
    error: str = ""


def create_backbone(name: str, weights: str | None = None) -> nn.Module:
    """A timm feature extractor (pooled features, no classifier); `weights` is a local file."""
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"weights {weights!r} lack {len(missing)} tensors of {name}, e.g. {missing[:3]}")
    return model


def stage_groups(model: nn.Module) -> dict[int, list[str]]:
    """Module names per stage group via timm's `group_matcher(coarse=True)`; group 0 is the stem."""
    from timm.models import group_modules

    return dict(group_modules(model, model.group_matcher(coarse=True)))


@lru_cache(maxsize=32)
def backbone_info(name: str) -> BackboneInfo:
    """Family and stage count of a timm model, built on the meta device (no memory, no download)."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        return BackboneInfo(name, error=f"is not a timm model name{hint}")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    family = type(model).__name__
    if family not in SUPPORTED_FAMILIES:
        return BackboneInfo(name, family=family, error=(
            f"is a {family}; norm conversion is supported for families: {', '.join(SUPPORTED_FAMILIES)}"))
    groups = stage_groups(model)
    return BackboneInfo(name, family, num_stages=len([g for g in groups if g > 0]),
                        num_features=model.num_features)


def freeze_stages(model: nn.Module, frozen_stages: int) -> None:
    """Freeze the stem and the first `frozen_stages` stages (timm stage groups).

    Frozen parameters get no gradient, and BN inside frozen stages becomes FrozenBatchNorm2d
    (timm's `freeze`), so its statistics stay fixed even in train mode. 0 freezes nothing.
    """
    if frozen_stages <= 0:
        return
    from timm.utils.model import freeze

    groups = stage_groups(model)
    stages = sorted(g for g in groups if g > 0)
    if frozen_stages > len(stages):
        raise ValueError(f"frozen_stages={frozen_stages} but the backbone has {len(stages)} stages")
    names = [n for g in [0, *stages[:frozen_stages]] for n in groups[g]]
    freeze(model, names)

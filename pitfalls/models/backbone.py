"""timm backbones: creation (never downloading), structure checks, and stage freezing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

# Families whose norm conversion is implemented and tested (widened by later issues).
SUPPORTED_FAMILIES = ("ResNet",)
# Structure of the supported timm models, generated for the pinned timm version by
# `uv run python -c "from pitfalls.models.backbone import write_backbone_table as w; w()"`: lets a study be validated without importing timm
# (its import alone takes ~7 s on a 2-core machine, mostly torchvision -> torch._dynamo).
TABLE_PATH = Path(__file__).with_name("backbones.json")
TABLE_MODULES = ("resnet",)


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


@lru_cache(maxsize=1)
def _known_backbones() -> dict[str, dict]:
    if not TABLE_PATH.is_file():
        return {}
    data = json.loads(TABLE_PATH.read_text())
    return data["models"] if data.get("timm_version") == version("timm") else {}


@lru_cache(maxsize=32)
def backbone_info(name: str) -> BackboneInfo:
    """Family and stage count of a timm model: from the shipped table, else by inspection."""
    known = _known_backbones().get(name)
    return BackboneInfo(name, **known) if known else inspect_backbone(name)


def inspect_backbone(name: str) -> BackboneInfo:
    """Build the model on the meta device (no memory, no download) and read its structure."""
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


def write_backbone_table(path: Path = TABLE_PATH) -> int:
    """Regenerate the table for the installed timm; returns the number of models written."""
    import timm

    models = {}
    for name in sorted({n for m in TABLE_MODULES for n in timm.list_models(module=m)}):
        info = inspect_backbone(name)
        if not info.error:
            models[name] = {k: v for k, v in asdict(info).items() if k not in ("name", "error")}
    path.write_text(json.dumps({"timm_version": version("timm"), "models": models}, indent=1) + "\n")
    return len(models)


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

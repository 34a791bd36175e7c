"""timm backbones: creation (never downloading), structure, stage freezing, and the support table.

Stages come from timm's `group_matcher(coarse=True)`: group 0 is the stem, then one group per
stage; a model's head/neck modules that match neither (e.g. ConvNeXt's head norm) are not a
stage. `frozen_stages = k` freezes the stem and the first k stages.

What validation asks (`backbone_info`: is it a timm model, of a supported family, how many
stages, which norms) is answered from `backbones.json` without importing torch or timm; the
table lists every timm model of the pinned version. torch and timm are imported when a backbone
is built or a name is missing from the table.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from pitfalls.fileio import atomic_write
from pitfalls.models.norms import NORM_NAMES, convert_norms, stray_norms

if TYPE_CHECKING:
    from torch import nn

# One small representative per family: the support table is measured on these.
FAMILY_EXAMPLES = {
    "ResNet": "test_resnet",
    "RegNet": "regnetx_002",
    "ConvNeXt": "test_convnext",
    "EfficientNet": "test_efficientnet",  # also MobileNetV2/MNASNet/... (timm's EfficientNet class)
    "MobileNetV3": "mobilenetv3_small_050",
    "NormFreeNet": "test_nfnet",
}
TABLE_MODULES = ("resnet", "regnet", "convnext", "efficientnet", "mobilenetv3", "nfnet")
# Structure of timm's models in those modules and the measured (family, norm) support, for the
# pinned timm version: lets a study be validated without importing timm (~7 s on 2 cores).
# Regenerate: uv run python -c "from pitfalls.models.backbone import write_backbone_table as w; w()"
TABLE_PATH = Path(__file__).with_name("backbones.json")
_UNMATCHED = "~unmatched~"  # a module name no group matcher matches: finds the head group


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str = ""
    num_stages: int = 0
    num_features: int = 0
    norms: tuple[str, ...] = field(default=())  # norms supported for this family
    error: str = ""


def _create_kwargs(family: str, norm: str | None) -> dict:
    # ConvNeXt's blocks normalize channels-last (nn.LayerNorm on NHWC) unless built with
    # conv_mlp=True; then every norm is a channels-first LayerNorm2d and swappable. Same
    # function; the MLP's Linear layers become 1x1 convolutions.
    return {"conv_mlp": True} if family == "ConvNeXt" and norm is not None else {}


def create_backbone(name: str, weights: str | None = None, norm: str | None = None) -> nn.Module:
    """A timm feature extractor (pooled features, no classifier); `weights` is a local file."""
    import timm
    import torch

    family = backbone_info(name).family
    model = timm.create_model(name, pretrained=False, num_classes=0, **_create_kwargs(family, norm))
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"weights {weights!r} lack {len(missing)} tensors of {name}, e.g. {missing[:3]}")
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features (MobileNetV3's head conv makes it differ from num_features)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def stage_groups(model: nn.Module) -> list[list[str]]:
    """[stem, stage 1, ..., stage N]: names of the modules holding parameters or buffers."""
    from timm.models._manipulate import group_with_matcher

    names = [n for n, m in model.named_modules() if n and (
        next(m.parameters(recurse=False), None) is not None
        or next(m.buffers(recurse=False), None) is not None)]
    groups = group_with_matcher([(n, n) for n in [*names, _UNMATCHED]],
                                model.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    return [[n for n in g if n != _UNMATCHED] for g in ordered if _UNMATCHED not in g]


def freeze_stages(model: nn.Module, frozen_stages: int) -> None:
    """Freeze the stem and the first `frozen_stages` stages.

    Frozen parameters get no gradient, and BN inside frozen stages becomes FrozenBatchNorm2d
    (timm's `freeze`, fused BN+act included), so its statistics stay fixed even in train mode;
    whitening layers there use their running estimates and stop updating them.
    """
    if frozen_stages <= 0:
        return
    from timm.utils.model import freeze

    groups = stage_groups(model)
    if frozen_stages > len(groups) - 1:
        raise ValueError(f"frozen_stages={frozen_stages} but the backbone has {len(groups) - 1} stages")
    names = [n for g in groups[:frozen_stages + 1] for n in g]
    freeze(model, names)
    modules = dict(model.named_modules())
    for name in names:  # whitening layers keep statistics of their own: stop those too
        if hasattr(modules.get(name), "freeze_statistics"):
            modules[name].freeze_statistics()


# ---------------------------------------------------------------------------------------------
# Structure and support table
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _table() -> dict:
    if not TABLE_PATH.is_file():
        return {}
    data = json.loads(TABLE_PATH.read_text())
    return data if data.get("timm_version") == version("timm") else {}


def family_support() -> dict[str, tuple[str, ...]]:
    """family -> supported norms, from the shipped table (else measured now)."""
    families = _table().get("families")
    if families:
        return {f: tuple(v["norms"]) for f, v in families.items()}
    return {f: measure_support(example) for f, example in FAMILY_EXAMPLES.items()}


@lru_cache(maxsize=64)
def backbone_info(name: str) -> BackboneInfo:
    """Family, stage count and supported norms of a timm model: from the table, else inspected."""
    table = _table()
    known = table.get("models", {}).get(name)
    if known:
        info = BackboneInfo(name, **known)
    elif table and table.get("other_models", {}).get(name) not in FAMILY_EXAMPLES:
        # the table lists every model of this timm version: refused without importing timm
        info = _unsupported(name, table.get("other_models", {}).get(name),
                            [*table.get("models", {}), *table.get("other_models", {})])
    else:  # no table for this timm, or a supported family outside TABLE_MODULES (res2net, ...)
        info = inspect_backbone(name)
    return info if info.error else replace(info, norms=family_support().get(info.family, ()))


def _unsupported(name: str, family: str | None, names: list[str]) -> BackboneInfo:
    """Why `name` cannot be a backbone: not a timm model (with similar names), or its family."""
    if family is None:
        pattern = f"*{name.split('_')[0]}*"
        close = sorted((n for n in names if fnmatch.fnmatchcase(n, pattern)), key=_natural)[:8]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        return BackboneInfo(name, error=f"is not a timm model name{hint}")
    return BackboneInfo(name, family=family, error=(
        f"is a {family}; supported families: {', '.join(FAMILY_EXAMPLES)}"))


def _natural(name: str) -> list:
    """timm's sort order of model names (numbers compared as numbers)."""
    import re

    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name.lower())]


def inspect_backbone(name: str) -> BackboneInfo:
    """Build the model on the meta device (no memory, no download) and read its structure.

    `norms` is left empty here; `backbone_info` adds the family's supported norms.
    """
    import timm
    import torch

    if not timm.is_model(name):
        return _unsupported(name, None, timm.list_models())
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    family = type(model).__name__
    if family not in FAMILY_EXAMPLES:
        return _unsupported(name, family, [])
    return BackboneInfo(name, family, num_stages=len(stage_groups(model)) - 1,
                        num_features=feature_dim(model))


def _family(name: str) -> str:
    """The class of timm model `name` (built on the meta device), or why it cannot be built."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            return type(timm.create_model(name, pretrained=False, num_classes=0)).__name__
    except Exception as e:  # noqa: BLE001 - recorded as why the model cannot be a backbone
        return f"model that cannot be built ({type(e).__name__})"


def measure_support(example: str) -> tuple[str, ...]:
    """The norms that convert cleanly on `example`: no stray norm left, train/eval forward works."""
    import timm
    import torch

    supported = []
    with torch.device("meta"):
        family = type(timm.create_model(example, pretrained=False, num_classes=0)).__name__
    for norm in NORM_NAMES:
        model = timm.create_model(example, pretrained=False, num_classes=0,
                                  **_create_kwargs(family, norm))
        had_norms = bool(stray_norms(model, "none"))
        model = convert_norms(model, norm)
        if stray_norms(model, norm) or (not had_norms and norm != "none"):
            continue  # something left unconverted, or nothing there to convert (norm-free nets)
        try:
            x = torch.rand(2, 3, 64, 64)
            out = model.train()(x), model.eval()(x)
        except Exception:  # noqa: BLE001 - a failed forward means "unsupported", recorded as such
            continue
        if all(o.shape == (2, feature_dim(model)) for o in out):
            supported.append(norm)
    return tuple(supported)


def write_backbone_table(path: Path = TABLE_PATH) -> int:
    """Regenerate the table for the installed timm; returns the number of models written."""
    import timm

    families = {f: {"example": ex, "norms": list(measure_support(ex))}
                for f, ex in FAMILY_EXAMPLES.items()}
    _table.cache_clear()
    models, others = {}, {}
    candidates = {n for m in TABLE_MODULES for n in timm.list_models(module=m)}
    for name in timm.list_models():
        info = inspect_backbone(name) if name in candidates else None
        if info is not None and not info.error:
            models[name] = {"family": info.family, "num_stages": info.num_stages,
                            "num_features": info.num_features}
        else:  # validation names the family of a model it refuses, without importing timm
            others[name] = info.family if info is not None else _family(name)
    atomic_write(path, json.dumps({"timm_version": version("timm"), "families": families,
                                "models": models, "other_models": others}, indent=1) + "\n")
    _table.cache_clear()
    backbone_info.cache_clear()
    return len(models)


def support_markdown() -> str:
    """The (family, norm) support table as Markdown, from the shipped table (docs/norms.md)."""
    from pitfalls.markdown import table

    support = family_support()
    return table(["family (example)", *NORM_NAMES],
                 [[f"{family} (`{example}`)", *("yes" if n in support.get(family, ()) else "–"
                                                for n in NORM_NAMES)]
                  for family, example in FAMILY_EXAMPLES.items()])

"""timm backbones: creation (pretrained weights through timm), structure, stage freezing, and the
support table.

Stages come from timm's `group_matcher(coarse=True)`: group 0 is the stem, then one group per
stage; a model's head/neck modules that match neither (e.g. ConvNeXt's head norm) are not a
stage. `frozen_stages = k` freezes the stem and the first k stages.

What validation asks (`backbone_info`: is it a timm model, of a supported family, how many
stages, which norms, which norm kinds its layers are, which pretrained tags it has and where timm
gets them) is answered from `backbones.json` without importing torch or timm; the table lists
every timm model of the pinned version. torch and timm are imported when a backbone is built or
a name is missing from the table. A name may carry a timm pretrained tag (`resnet50.a1_in1k`);
without one, timm's default tag applies.
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
from pitfalls.models.norms import NORM_NAMES, convert_norms, norm_kinds, stray_norms
from pitfalls.models.pretrained import WeightsSource

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
    norm_kinds: tuple[str, ...] = ()  # kinds of its norm layers as timm builds it (`norms.norm_kind`)
    weights: tuple[WeightsSource, ...] = ()  # its pretrained tags in timm, the default first
    tag: str = ""  # the pretrained tag `name` carries ("": timm's default)

    @property
    def source(self) -> WeightsSource | None:
        """Where timm gets the weights `name` names (its tag, else the default), or None."""
        want = f"{split_name(self.name)[0]}.{self.tag}" if self.tag else None
        return next((w for w in self.weights if want in (None, w.name)), None)


def split_name(name: str) -> tuple[str, str]:
    """`resnet50.a1_in1k` -> ("resnet50", "a1_in1k"); no tag -> (name, "") (timm's convention)."""
    arch, _, tag = name.partition(".")
    return arch, tag


def _create_kwargs(family: str, norm: str | None) -> dict:
    # ConvNeXt's blocks normalize channels-last (nn.LayerNorm on NHWC) unless built with
    # conv_mlp=True; then every norm is a channels-first LayerNorm2d and swappable. Same
    # function; the MLP's Linear layers become 1x1 convolutions.
    return {"conv_mlp": True} if family == "ConvNeXt" and norm is not None else {}


def create_backbone(name: str, weights: str | None = None, norm: str | None = None, *,
                    pretrained: bool = False) -> nn.Module:
    """A timm feature extractor (pooled features, no classifier); `weights` is a local file,
    `pretrained` loads the weights timm names for `name` (its tag, else timm's default) through
    `timm.create_model(pretrained=True)`: the Hugging Face cache, HF_HOME, HF_HUB_OFFLINE and
    mirrors apply. The model's `pretrained_cfg` (mean, std, ...) is timm's for that tag."""
    import timm
    import torch

    family = backbone_info(name).family
    kwargs = _create_kwargs(family, norm)
    if pretrained:
        model = timm.create_model(name, pretrained=True, num_classes=0)
        return _rebuilt(model, name, kwargs) if kwargs else model
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"weights {weights!r} lack {len(missing)} tensors of {name}, e.g. {missing[:3]}")
    return model


def _rebuilt(model: nn.Module, name: str, kwargs: dict) -> nn.Module:
    """`model`'s weights in the same model built with `kwargs` (ConvNeXt's conv_mlp: its MLP's
    Linear weights become the 1x1 convolutions' by a reshape; timm's own loader does not do
    this for timm-format checkpoints). Every tensor must find its place."""
    import timm

    target = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    want = target.state_dict()
    state = model.state_dict()
    if set(state) != set(want):
        raise ValueError(f"{name} built with {kwargs} has other tensors than its pretrained "
                         f"weights: {sorted(set(state) ^ set(want))[:3]}")
    target.load_state_dict({k: v.reshape(want[k].shape) for k, v in state.items()})
    return target


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
    """Family, stage count, supported norms, norm kinds and pretrained tags of a timm model
    (`name` may carry a tag): from the table, else inspected."""
    arch, tag = split_name(name)
    table = _table()
    known = table.get("models", {}).get(arch)
    if known:
        info = _from_table(arch, known)
    elif table and table.get("other_models", {}).get(arch) not in FAMILY_EXAMPLES:
        # the table lists every model of this timm version: refused without importing timm
        info = _unsupported(arch, table.get("other_models", {}).get(arch),
                            [*table.get("models", {}), *table.get("other_models", {})])
    else:  # no table for this timm, or a supported family outside TABLE_MODULES (res2net, ...)
        info = inspect_backbone(arch)
    info = replace(info, name=name, tag=tag)
    if info.error:
        return info
    if tag and info.source is None:
        tags = [split_name(w.name)[1] for w in info.weights]
        return replace(info, error=f"has no pretrained tag {tag!r} in timm {version('timm')}; "
                       + (f"valid tags: {', '.join(tags)}" if tags else f"{arch} has no pretrained weights"))
    return replace(info, norms=family_support().get(info.family, ()))


def _from_table(arch: str, entry: dict) -> BackboneInfo:
    weights = tuple(WeightsSource(f"{arch}.{tag}", w["hf_hub_id"], tuple(w["files"]))
                    for tag, w in entry.get("weights", {}).items())
    return BackboneInfo(arch, entry["family"], entry["num_stages"], entry["num_features"],
                        norm_kinds=tuple(entry.get("norm_kinds", ())), weights=weights)


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
        kwargs = _create_kwargs(family, "")  # built as a trial builds it (ConvNeXt: conv_mlp)
        built = timm.create_model(name, pretrained=False, num_classes=0, **kwargs) if kwargs else model
    return BackboneInfo(name, family, num_stages=len(stage_groups(model)) - 1,
                        num_features=feature_dim(model), norm_kinds=norm_kinds(built),
                        weights=_weights_sources(name))


def _weights_sources(arch: str) -> tuple[WeightsSource, ...]:
    """timm's pretrained tags of `arch` that come from the Hugging Face Hub, the default first,
    with the files timm's loader tries there in its order (timm 1.0.31 has no tag elsewhere
    for these families)."""
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives

    default = get_pretrained_cfg(arch)
    cfgs = sorted(get_arch_pretrained_cfgs(arch).items(),
                  key=lambda kv: kv[0] != f"{arch}.{default.tag}" if default else False)
    out = []
    for full, cfg in cfgs:
        if not cfg.hf_hub_id:
            continue
        filename = cfg.hf_hub_filename or HF_WEIGHTS_NAME
        files = ((filename,) if filename.endswith(".safetensors")
                 else (*_get_safe_alternatives(filename), filename))
        out.append(WeightsSource(full, cfg.hf_hub_id, files))
    return tuple(out)


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
                            "num_features": info.num_features, "norm_kinds": list(info.norm_kinds),
                            "weights": {split_name(w.name)[1]: {"hf_hub_id": w.hf_hub_id,
                                                                "files": list(w.files)}
                                        for w in info.weights}}
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

"""Backbones, norms, freezing, temporal heads. No Ray, MLflow or pydantic imports.

The registries (`norms`, `heads`, `backbone`'s table) import no torch, so a study validates
without it; the names below that need torch are imported on first use.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "NORMS": "norms", "NORM_NAMES": "norms", "NormOptions": "norms", "convert_norms": "norms",
    "EvalModeBatchNorm2d": "norm_layers", "HEADS": "heads", "HEAD_NAMES": "heads",
    "backbone_info": "backbone", "create_backbone": "backbone", "freeze_stages": "backbone",
    "stage_groups": "backbone", "CausalLSTMHead": "temporal", "VideoModel": "video_model",
    "build_model": "video_model",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)

"""Backbones, norms, freezing and temporal heads. No Ray/MLflow imports."""

from pitfalls.models.backbone import backbone_info, create_backbone, freeze_stages, stage_groups
from pitfalls.models.norms import NORM_NAMES, NORMS, EvalModeBatchNorm2d, convert_norms
from pitfalls.models.video_model import CausalLSTMHead, VideoModel, build_model

__all__ = ["NORMS", "NORM_NAMES", "EvalModeBatchNorm2d", "convert_norms", "backbone_info",
           "create_backbone", "freeze_stages", "stage_groups", "CausalLSTMHead", "VideoModel",
           "build_model"]

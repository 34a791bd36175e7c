"""Datasets and samplers. No Ray/MLflow imports: usable on a bare GPU box."""

from pitfalls.data.sampler import SequenceSampler
from pitfalls.data.synthetic import SyntheticOptions, Video, make_videos, video_lengths

__all__ = ["SequenceSampler", "SyntheticOptions", "Video", "make_videos", "video_lengths"]

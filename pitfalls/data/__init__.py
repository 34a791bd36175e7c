"""Datasets and samplers. No Ray/MLflow imports: usable on a bare GPU box."""

from pitfalls.data.base import DataError, FileFrames, Video, VideoData
from pitfalls.data.sampler import SequenceSampler
from pitfalls.data.synthetic import SyntheticOptions, make_videos, synthetic_data, video_lengths

__all__ = ["DataError", "FileFrames", "SequenceSampler", "SyntheticOptions", "Video", "VideoData",
           "make_videos", "synthetic_data", "video_lengths"]

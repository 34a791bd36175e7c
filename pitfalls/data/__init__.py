"""Datasets, the packed frame store and samplers. No Ray/MLflow imports: usable on a bare GPU box."""

from pitfalls.data.base import DataError, FileFrames, Video, VideoData
from pitfalls.data.load import load_data
from pitfalls.data.sampler import CarriedSampler, SequenceSampler
from pitfalls.data.synthetic import SyntheticOptions, make_videos, synthetic_data, video_lengths

__all__ = ["CarriedSampler", "DataError", "FileFrames", "SequenceSampler", "SyntheticOptions", "Video",
           "VideoData", "load_data", "make_videos", "synthetic_data", "video_lengths"]

"""Datasets, the packed frame store and samplers. Imports no torch, Ray, MLflow or pydantic:
usable on a bare GPU box and by study validation."""

from pitfalls.data.base import DataError, FileFrames, Video, VideoData
from pitfalls.data.load import DATASETS, DatasetSpec, load_data
from pitfalls.data.sampler import CarriedSampler, SequenceSampler
from pitfalls.data.synthetic import SyntheticOptions, make_videos, synthetic_data, video_lengths

__all__ = ["DATASETS", "CarriedSampler", "DataError", "DatasetSpec", "FileFrames", "SequenceSampler",
           "SyntheticOptions", "Video", "VideoData", "load_data", "make_videos", "synthetic_data",
           "video_lengths"]

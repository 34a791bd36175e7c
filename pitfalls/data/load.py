"""The dataset registry: every dataset a study can name, with its options and how it is read.

A dataset is its module (an options dataclass, the study's `dataset.options`, and a function
that reads `VideoData` from its files) plus one entry in `DATASETS`; validation, the study
schema and `load_data` derive from the entry. With `store:` set, frames and labels come from a
packed store instead (memory-mapped, nothing decoded, nothing copied). Loads are cached per
process: a reused Tune trial process loads its dataset once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pitfalls.data import cholec80, frames
from pitfalls.data.base import DataError, Video, VideoData
from pitfalls.data.synthetic import SyntheticOptions, synthetic_data, video_lengths

SPLITS_FILE = "splits.json"  # written next to a packed `frames` store whose labels had a split column


@dataclass(frozen=True)
class DataFacts:
    """What validation needs to know of a dataset: its training videos' lengths, instruments."""

    train_lengths: list[int]
    tool_names: tuple[str, ...]
    test_videos: int  # videos in the test split (0: the dataset has none)


@dataclass(frozen=True)
class Dataset:
    options: type  # the dataclass of `dataset.options`
    read: Callable[[Any], VideoData]  # options -> videos per split from the dataset's own files
    # a packed store's video ids -> ids per split (None: the dataset has no packed store)
    store_splits: Callable[[Any, list[str], Path], dict[str, list[str]]] | None = None
    # instruments anticipated when the study names none (empty: every instrument)
    anticipation_tools: tuple[str, ...] = ()
    # the facts without reading the data (None: they come from `load_data`)
    facts: Callable[[Any], DataFacts] | None = None
    index_fps: float | None = None  # what its frame indices count (VideoData.index_fps)


def _synthetic_facts(o: SyntheticOptions) -> DataFacts:
    return DataFacts(video_lengths(o)[o.val_videos:], tuple(f"tool{k + 1}" for k in range(o.num_tools)),
                     o.test_videos)


def _frames_store_splits(o: frames.FramesOptions, ids: list[str], store: Path) -> dict[str, list[str]]:
    if o.split is not None:
        wanted = o.split_mapping()
    elif (store / SPLITS_FILE).is_file():
        wanted = json.loads((store / SPLITS_FILE).read_text())
    else:
        raise DataError(str(store), ["no split: set dataset.options.split (the store was packed "
                                     "from labels without a split column)"])
    unknown = sorted({v for vs in wanted.values() for v in vs} - set(ids))
    if unknown:
        raise DataError(str(store), [f"split names videos not in the store: {', '.join(unknown)}"])
    return wanted


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(SyntheticOptions, synthetic_data, facts=_synthetic_facts),
    "cholec80": Dataset(cholec80.Cholec80Options, cholec80.read, cholec80.store_splits,
                        anticipation_tools=cholec80.ANTICIPATION_TOOLS, index_fps=cholec80.ANNOTATION_FPS),
    "frames": Dataset(frames.FramesOptions, frames.read, _frames_store_splits),
}
DATASET_NAMES = tuple(DATASETS)


@dataclass(frozen=True)
class DatasetSpec:
    """A study's dataset: a name in `DATASETS` and that dataset's options."""

    name: str = "synthetic"
    options: Any = field(default_factory=SyntheticOptions)


@lru_cache(maxsize=2)
def load_data(spec: DatasetSpec) -> VideoData:
    """The dataset's videos per split; raises one `DataError` listing every problem."""
    if getattr(spec.options, "store", None):
        return _from_store(spec)
    return DATASETS[spec.name].read(spec.options)


def data_facts(spec: DatasetSpec) -> DataFacts:
    """Training video lengths and instruments, as cheaply as the dataset allows."""
    facts = DATASETS[spec.name].facts
    if facts is not None:
        return facts(spec.options)
    data = load_data(spec)
    return DataFacts([len(v) for v in data.train], data.tool_names, len(data.test))


def _from_store(spec: DatasetSpec) -> VideoData:
    from pitfalls.data.store import open_store

    o = spec.options
    store = open_store(o.store)
    problems = []
    if store.dataset != spec.name:
        problems.append(f"{o.store}: the store holds dataset {store.dataset!r}, the study names {spec.name!r}")
    if tuple(store.size) != tuple(o.frame_size):
        problems.append(f"{o.store}: frames are {store.size[0]}x{store.size[1]}, the study's "
                        f"frame_size is {o.frame_size[0]}x{o.frame_size[1]}: set frame_size to the "
                        "store's size or pack again with --size")
    if problems:
        raise DataError(o.store, problems)
    by_id = {v.id: v for v in store.videos}
    splits = DATASETS[spec.name].store_splits(o, [v.id for v in store.videos], Path(o.store))
    return VideoData(name=spec.name, phase_names=tuple(store.phase_names),
                     tool_names=tuple(store.tool_names),
                     splits={k: [by_id[i] for i in ids] for k, ids in splits.items()}, fps=store.fps,
                     index_fps=DATASETS[spec.name].index_fps)


def anticipation_tools(dataset: str, tools: Sequence[str], tool_names: Sequence[str]) -> tuple[str, ...]:
    """The instruments to anticipate: the study's list, else the dataset's default set
    (Cholec80's five sparsely used ones, the papers' choice), else every instrument."""
    if tools:
        return tuple(tools)
    default = DATASETS[dataset].anticipation_tools
    return tuple(t for t in default if t in tool_names) if default else tuple(tool_names)


__all__ = ["DATASETS", "DATASET_NAMES", "DataFacts", "Dataset", "DatasetSpec", "Video",
           "anticipation_tools", "data_facts", "load_data"]

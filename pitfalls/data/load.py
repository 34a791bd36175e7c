"""A study's `DatasetSpec` -> `VideoData`: the one place that knows every dataset and the store.

With `store:` set, frames and labels come from the packed store (memory-mapped, nothing decoded,
nothing copied); otherwise from the dataset's own files, decoded on demand at `frame_size`.
Loads are cached per process: a reused Tune trial process loads its dataset once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pitfalls.data.base import DataError, Video, VideoData
from pitfalls.data.synthetic import synthetic_data

if TYPE_CHECKING:
    from pitfalls.config import DatasetSpec, TaskSpec

SPLITS_FILE = "splits.json"  # written next to a packed `frames` store whose labels had a split column


@lru_cache(maxsize=2)
def load_data(spec: "DatasetSpec") -> VideoData:
    """The dataset's videos per split; raises one `DataError` listing every problem."""
    o = spec.options
    if spec.name == "synthetic":
        return synthetic_data(o)
    if o.store:
        return _from_store(spec)
    if spec.name == "cholec80":
        from pitfalls.data import cholec80

        split = o.split if isinstance(o.split, str) else {k: list(v) for k, v in o.split}
        return cholec80.load(o.root, split=split, size=o.frame_size, fps=o.fps)
    from pitfalls.data import frames

    return frames.load(o.root, labels=o.labels, video_column=o.video_column,
                       frame_column=o.frame_column, phase_column=o.phase_column,
                       tool_columns=o.tool_columns, phases=o.phases,
                       split=None if o.split is None else {k: list(v) for k, v in o.split},
                       size=o.frame_size, fps=o.fps)


def _from_store(spec: "DatasetSpec") -> VideoData:
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
    splits = _store_splits(spec, store.videos, Path(o.store))
    return VideoData(name=spec.name, phase_names=tuple(store.phase_names),
                     tool_names=tuple(store.tool_names),
                     splits={k: [by_id[i] for i in ids] for k, ids in splits.items()}, fps=store.fps)


def _store_splits(spec: "DatasetSpec", videos: Sequence[Video], store: Path) -> dict[str, list[str]]:
    o = spec.options
    ids = [v.id for v in videos]
    if spec.name == "cholec80":
        from pitfalls.data import cholec80

        numbers = {int("".join(c for c in i if c.isdigit())): i for i in ids}
        split = o.split if isinstance(o.split, str) else {k: list(v) for k, v in o.split}
        resolved = cholec80.resolve_split(split, sorted(numbers))
        return {k: [numbers[n] for n in v] for k, v in resolved.items()}
    if o.split is not None:
        wanted = {k: list(v) for k, v in o.split}
    elif (store / SPLITS_FILE).is_file():
        wanted = json.loads((store / SPLITS_FILE).read_text())
    else:
        raise DataError(str(store), ["no split: set dataset.options.split (the store was packed "
                                     "from labels without a split column)"])
    unknown = sorted({v for vs in wanted.values() for v in vs} - set(ids))
    if unknown:
        raise DataError(str(store), [f"split names videos not in the store: {', '.join(unknown)}"])
    return wanted


def anticipation_tools(dataset: str, task: "TaskSpec", tool_names: Sequence[str]) -> tuple[str, ...]:
    """The instruments to anticipate: the study's list, else Cholec80's five (the papers'
    choice: instruments that are used sparsely), else every instrument of the dataset."""
    if task.tools:
        return tuple(task.tools)
    if dataset == "cholec80":
        from pitfalls.data.cholec80 import ANTICIPATION_TOOLS

        return tuple(t for t in ANTICIPATION_TOOLS if t in tool_names)
    return tuple(tool_names)

"""What every dataset loads into: videos of frames plus per-frame labels, grouped in splits.

A video's `frames` is anything that slices like a (T, H, W, 3) uint8 array: an in-memory array
(synthetic), a lazily decoding `FileFrames` (image files on disk), or a read-only `np.memmap`
view into a packed store. The training loop only ever does `video.frames[start:stop]`, so the
three sources are interchangeable and a packed store is never copied into a worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from pitfalls.fields import Ints, Marker, Problem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_NAMES = ("train", "val", "test")


class DataError(ValueError):
    """Every problem found in a dataset (file and line where there is one), one per line."""

    def __init__(self, source: str, problems: list[str], limit: int = 30):
        self.source = source
        self.problems = problems
        shown = problems[:limit]
        lines = "\n".join(f"  - {p}" for p in shown)
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}{more}")


@dataclass(frozen=True)
class Video:
    id: str
    frames: Any  # (T, H, W, 3) uint8, sliceable: np.ndarray, np.memmap or FileFrames
    phases: np.ndarray  # (T,) int64 phase index per frame
    tools: np.ndarray  # (T, num_tools) uint8 instrument presence

    def __len__(self) -> int:
        return len(self.phases)


@dataclass(frozen=True)
class VideoData:
    """A loaded dataset: its label names and its videos per split ("train", "val", maybe "test")."""

    name: str
    phase_names: tuple[str, ...]
    tool_names: tuple[str, ...]
    splits: dict[str, list[Video]] = field(default_factory=dict)
    fps: float = 1.0  # frames per second of the (extracted) frames: anticipation works in minutes
    # the rate the dataset's own frame indices count (Cholec80: its 25-fps annotation rows);
    # None: a frame's index is its position in the video
    index_fps: float | None = None

    def frame_numbers(self, video: Video) -> np.ndarray:
        """The dataset's frame index of each frame of `video`, as its annotation files number
        them (prediction files are written with these, so other evaluators can match them)."""
        k = np.arange(len(video))
        if self.index_fps is None:
            return k
        return np.floor(k * (self.index_fps / self.fps) + 0.5).astype(np.int64)

    @property
    def train(self) -> list[Video]:
        return self.splits.get("train", [])

    @property
    def val(self) -> list[Video]:
        return self.splits.get("val", [])

    @property
    def test(self) -> list[Video]:
        return self.splits.get("test", [])


@dataclass(frozen=True)
class SplitField(Marker):
    """`split`: a standard split's name, or {train: [ids], val: [ids], test: [ids]} (kept as
    ((part, (ids...)), ...)); that the ids exist is checked against the data (`split_problems`)."""

    kind: type = int  # video ids: integers (Cholec80) or names (frames)
    standard: tuple[str, ...] = ()
    optional: bool = False  # None: the dataset's own split (frames: the labels' split column)

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, str) and value in self.standard:
            return value
        if not isinstance(value, Mapping):
            valid = (", ".join(self.standard) + " or " if self.standard else "")
            raise ValueError(f"is not a split; valid: {valid}a mapping "
                             "{train: [...], val: [...], test: [...]}")
        what = "ids (integers)" if self.kind is int else "names"
        for part, ids in value.items():
            if part not in SPLIT_NAMES:
                raise ValueError(f"has an unknown part {part!r}; valid choices: {', '.join(SPLIT_NAMES)}")
            if not isinstance(ids, (list, tuple)) or not all(
                    isinstance(i, self.kind) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"{part} must be a list of video {what}")
        for required in ("train", "val"):
            if required not in value:
                raise ValueError(f"needs {required}: a list of videos")
        return tuple((part, tuple(ids)) for part, ids in value.items())



FrameSize = Annotated[tuple[int, int], Ints(2, ge=8, message="must be [width, height], integers >= 8")]


def needs_root_or_store(options: Any, dataset: str) -> list[Problem]:
    """A real dataset is read from its folder (`root`) or from its packed store (`store`)."""
    if options.root or options.store:
        return []
    return [Problem("root", None, f"is required for {dataset} (or `store`: a packed store from "
                                  "`pitfalls data pack`)", ("store",))]


def decode_frame(path: str | Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image file -> (H, W, 3) uint8, resized to `size` = (W, H) if given.

    JPEGs are decoded with `draft`: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain while
    decoding, so a frame that is downsized anyway costs a fraction of a full decode.
    """
    from PIL import Image

    with Image.open(path) as img:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", size)
        img = img.convert("RGB")
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:  # Pillow releases the GIL while decoding: threads scale across cores
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    return _POOL


class FileFrames:
    """A video's frames as image files, decoded (and resized) only when sliced."""

    def __init__(self, paths: Sequence[str | Path], size: tuple[int, int] | None = None):
        self.paths = [str(p) for p in paths]
        self.size = tuple(size) if size is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        if self.size is None:
            h, w = decode_frame(self.paths[0], None).shape[:2]
        else:
            w, h = self.size
        return (len(self.paths), h, w, 3)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return decode_frame(self.paths[key], self.size)
        paths = self.paths[key]
        if not paths:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        frames = list(_pool().map(lambda p: decode_frame(p, self.size), paths))
        return np.stack(frames)


def summary(videos: Sequence[Video], phase_names: Sequence[str],
            tool_names: Sequence[str]) -> dict:
    """Per video: frames, frames per phase, frames with each instrument present (`data check`)."""
    out = []
    for v in videos:
        phase_counts = np.bincount(v.phases, minlength=len(phase_names))
        tool_counts = v.tools.sum(axis=0) if len(tool_names) else []
        out.append({
            "id": v.id,
            "frames": len(v),
            "phases": {n: int(c) for n, c in zip(phase_names, phase_counts)},
            "tools": {n: int(c) for n, c in zip(tool_names, tool_counts)},
        })
    return {"videos": out}

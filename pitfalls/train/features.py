"""Where a two-stage trial keeps its frozen CNN's per-frame features: one float32 array per
video, under `<study>/features/<trial id>/<fingerprint>/<split>/<video>.npy` in the study's
storage (a disk or object storage, through pyarrow), so a resumed trial reads them back instead
of running the CNN over every frame again.

The fingerprint names the CNN that made them (its weights and buffers, and the fast path's
precision and layout): features of another CNN (a trial restarted from scratch) are never read,
and are deleted when new ones are written. A file is written whole (a temporary name, then a
move; an object store's put is atomic), so a kill while extracting leaves complete files only.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import pyarrow.fs
import torch


class FeatureStore(Protocol):
    def load(self, key: str, split: str, video: str) -> np.ndarray | None: ...
    def save(self, key: str, split: str, video: str, features: np.ndarray) -> None: ...


class MemoryFeatures:
    """Features kept in this process only (a trial trained without a study directory)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], np.ndarray] = {}

    def load(self, key: str, split: str, video: str) -> np.ndarray | None:
        return self._items.get((key, split, video))

    def save(self, key: str, split: str, video: str, features: np.ndarray) -> None:
        if any(k[0] != key for k in self._items):  # another CNN's features are stale
            self._items.clear()
        self._items[(key, split, video)] = features


class DirectoryFeatures:
    """Features under `directory` of `fs` (the study's storage)."""

    def __init__(self, fs: pyarrow.fs.FileSystem, directory: str):
        self.fs, self.directory = fs, directory.rstrip("/")
        self._cleaned: str | None = None

    def _path(self, key: str, split: str, video: str) -> str:
        return f"{self.directory}/{key}/{split}/{video}.npy"

    def load(self, key: str, split: str, video: str) -> np.ndarray | None:
        path = self._path(key, split, video)
        if self.fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with self.fs.open_input_file(path) as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)

    def save(self, key: str, split: str, video: str, features: np.ndarray) -> None:
        if self._cleaned != key:  # another CNN's features are stale: delete them once
            self._delete_others(key)
            self._cleaned = key
        path = self._path(key, split, video)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
        target = path if self.fs.type_name == "s3" else f"{path}.tmp"  # a put is atomic
        with self.fs.open_output_stream(target) as f:
            f.write(buffer.getvalue())
        if target != path:
            self.fs.move(target, path)

    def _delete_others(self, key: str) -> None:
        selector = pyarrow.fs.FileSelector(self.directory, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pyarrow.fs.FileType.Directory and info.base_name != key:
                self.fs.delete_dir(info.path)


def fingerprint(tensors: Iterable[tuple[str, torch.Tensor]], extra: str = "") -> str:
    """A short hash of named tensors (a CNN's state) and `extra` (how it runs)."""
    digest = hashlib.sha256(extra.encode())
    for name, t in tensors:
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

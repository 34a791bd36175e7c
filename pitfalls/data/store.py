"""Packed frame store: every frame decoded once, resized, into one memory-mapped uint8 file.

End-to-end training draws short runs of consecutive frames from random videos; decoding their
JPEGs at every step costs more CPU than a GPU step (benchmarks/loader.py measures both). `pack`
decodes each frame once at the training size; a batch is then a copy out of a memmap. Ray
workers call `open_store` on the same (shared) path themselves: the OS page cache holds the
store once per machine and nothing goes through Ray's object store.

Layout of a store directory:
  frames.u8      (N, H, W, 3) uint8, all videos back to back, preallocated at the start
  index.parquet  one row per frame: video, frame, row, phase, tool:<name>... (written last)
  meta.json      format, version, dataset, source, size [W, H], fps, phase/tool names,
                 videos [{id, start, length}], frames N, complete
  progress.json  ids of the videos whose frames are on disk: fsync'd first, then recorded
                 (os.replace), so an interrupted `pack` resumes at the first unfinished video.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pitfalls.data.base import DataError, FileFrames, Video, decode_frame
from pitfalls.fileio import atomic_open, atomic_write

FORMAT = "pitfalls-frame-store"
VERSION = 1
FRAMES_FILE = "frames.u8"
INDEX_FILE = "index.parquet"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
CHUNK = 16  # frames per decode task: small enough for a smooth bar, large enough to amortize
TOOL_PREFIX = "tool:"
# Threads: measured on 2 cores (854x480 JPEG -> 384x216, pools already started) they decode as
# fast as processes (~540 frames/s each: Pillow releases the GIL while decoding and resizing),
# and they start at once (a process pool pays ~1-2 s of imports per `pack`), let tests count
# decodes, and leave nothing behind when `pack` is SIGKILLed (forkserver workers are orphaned).
DEFAULT_POOL: Literal["thread", "process"] = "thread"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StoreContents:
    """An opened store: labels in memory, frames as read-only memmap views (nothing copied)."""

    dataset: str
    source: str
    size: tuple[int, int]  # (W, H)
    fps: float
    phase_names: tuple[str, ...]
    tool_names: tuple[str, ...]
    videos: list[Video]
    path: Path | None = None


# ---------------------------------------------------------------------------------- packing


def pack(videos: Sequence[Video], phase_names: Sequence[str], tool_names: Sequence[str],
         out: str | Path, size: tuple[int, int], *, dataset: str, source: str,
         fps: float = 1.0, workers: int | None = None, progress: Progress | None = None,
         pool: Literal["thread", "process"] = DEFAULT_POOL) -> Path:
    """Decode every frame of `videos` at `size` = (W, H) into the store `out`; returns `out`.

    Resumable: videos recorded as finished by an earlier, interrupted run with the same inputs
    are not decoded again; a store packed from other inputs is refused (DataError says what
    differs). Labels and names are (re)written at the end, so fixing labels costs no decoding.
    """
    out = Path(out)
    size = _check_size(size)
    _check_inputs(videos, tool_names)
    layout = _layout(videos, dataset, source, size)
    done = _prepare(out, layout, _meta(layout, fps, phase_names, tool_names, complete=False))
    total = layout["frames"]
    state = {"frames": sum(v["length"] for v in layout["videos"] if v["id"] in done)}
    if progress is not None:
        progress(state["frames"], total)

    def chunk_written(n: int) -> None:
        state["frames"] += n
        if progress is not None:
            progress(state["frames"], total)

    todo = [(v, entry["start"]) for v, entry in zip(videos, layout["videos"]) if v.id not in done]
    _write_frames(out, todo, size, workers or _cpu_count(), pool, done, chunk_written)
    _write_index(out, videos, tool_names, [v["start"] for v in layout["videos"]])
    _write_json(out / META_FILE, _meta(layout, fps, phase_names, tool_names, complete=True))
    return out


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise DataError("pack", [f"size must be two positive integers (W, H), got {size!r}"])
    return int(size[0]), int(size[1])


def _check_inputs(videos: Sequence[Video], tool_names: Sequence[str]) -> None:
    problems = []
    dupes = sorted(i for i, c in Counter(v.id for v in videos).items() if c > 1)
    if dupes:
        problems.append(f"duplicate video ids: {dupes}")
    for v in videos:
        n = len(v.phases)
        if len(v.frames) != n:
            problems.append(f"video {v.id}: {len(v.frames)} frames but {n} phase labels")
        if v.tools.shape != (n, len(tool_names)):
            problems.append(f"video {v.id}: tools shape {v.tools.shape}, "
                            f"expected ({n}, {len(tool_names)})")
        info = np.iinfo(np.int16)
        if n and (v.phases.min() < info.min or v.phases.max() > info.max):
            problems.append(f"video {v.id}: phase labels outside int16")
    if not problems and sum(len(v) for v in videos) == 0:
        problems.append("no frames to pack")
    if problems:
        raise DataError("pack", problems)


def _layout(videos: Sequence[Video], dataset: str, source: str, size: tuple[int, int]) -> dict:
    """What determines the bytes of frames.u8: a store with another layout cannot be resumed."""
    entries, start = [], 0
    for v in videos:
        entries.append({"id": v.id, "start": start, "length": len(v)})
        start += len(v)
    return {"dataset": dataset, "source": str(source), "size": list(size), "videos": entries,
            "frames": start}


def _meta(layout: dict, fps: float, phase_names: Sequence[str], tool_names: Sequence[str],
          complete: bool) -> dict:
    return {"format": FORMAT, "version": VERSION, "dataset": layout["dataset"],
            "source": layout["source"], "size": layout["size"], "fps": float(fps),
            "phase_names": list(phase_names), "tool_names": list(tool_names),
            "videos": layout["videos"], "frames": layout["frames"], "complete": complete}


def _differences(meta: dict, layout: dict, limit: int = 10) -> list[str]:
    """Human-readable differences between a store's meta.json and the inputs of this pack."""
    diffs = []
    for key in ("dataset", "source", "size"):
        if meta.get(key) != layout[key]:
            diffs.append(f"{key}: store has {meta.get(key)!r}, inputs have {layout[key]!r}")
    old = [(v.get("id"), v.get("length")) for v in meta.get("videos", [])]
    new = [(v["id"], v["length"]) for v in layout["videos"]]
    if old != new:
        if len(old) != len(new):
            diffs.append(f"videos: store has {len(old)}, inputs have {len(new)}")
        shown = 0
        for i in range(max(len(old), len(new))):
            a = old[i] if i < len(old) else None
            b = new[i] if i < len(new) else None
            if a != b and shown < limit:
                diffs.append(f"video #{i}: store has {_describe(a)}, inputs have {_describe(b)}")
                shown += 1
    return diffs


def _describe(entry: tuple[str, int] | None) -> str:
    return "nothing" if entry is None else f"{entry[0]!r} ({entry[1]} frames)"


def _prepare(out: Path, layout: dict, new_meta: dict) -> set[str]:
    """Start a new store or check an existing one against `layout`; returns finished video ids."""
    if out.exists() and not out.is_dir():
        raise DataError(str(out), ["exists and is not a directory"])
    frames = out / FRAMES_FILE
    nbytes = layout["frames"] * _frame_bytes(layout["size"])
    if (out / META_FILE).exists():
        meta = _read_meta(out)
        diffs = _differences(meta, layout)
        if diffs:
            raise DataError(str(out), [
                "this store was packed from other inputs; delete it or pack to another directory",
                *diffs])
        ids = {v["id"] for v in layout["videos"]}
        done = ids if meta.get("complete") else _read_done(out) & ids
        if frames.exists() and frames.stat().st_size == nbytes:
            return done
        if done:
            have = frames.stat().st_size if frames.exists() else "no"
            raise DataError(str(out), [f"{FRAMES_FILE} has {have} bytes, expected {nbytes}: "
                                       "the store is damaged; delete it and pack again"])
    out.mkdir(parents=True, exist_ok=True)
    for name in (PROGRESS_FILE, INDEX_FILE):
        (out / name).unlink(missing_ok=True)
    _preallocate(frames, nbytes)
    _write_json(out / META_FILE, new_meta)
    _write_json(out / PROGRESS_FILE, {"done": []})
    return set()


def _frame_bytes(size: Sequence[int]) -> int:
    return int(size[0]) * int(size[1]) * 3


def _preallocate(path: Path, nbytes: int) -> None:
    """Full size up front: a store that cannot fit fails now, not hours into the pack."""
    existing = path.stat().st_size if path.exists() else 0
    free = shutil.disk_usage(path.parent).free
    if nbytes - existing > free:
        raise DataError(str(path), [f"needs {nbytes / 1e9:.1f} GB, only {free / 1e9:.1f} GB free"])
    with open(path, "wb") as f:
        f.truncate(nbytes)  # sparse until written; every row is written exactly once


def _write_frames(out: Path, todo: list[tuple[Video, int]], size: tuple[int, int], workers: int,
                  pool: str, done: set[str], chunk_written: Callable[[int], None]) -> None:
    """Decode `todo` into frames.u8; a video is recorded as done once its rows are fsync'd."""
    path = out / FRAMES_FILE
    fd = os.open(path, os.O_RDWR)
    decode = any(isinstance(v.frames, FileFrames) for v, _ in todo)
    executor = _executor(pool, workers) if decode else None
    pending: dict[Future, tuple[int, Video]] = {}  # future -> (submission order, its video)
    remaining: dict[str, int] = {}

    def video_finished(video: Video) -> None:
        os.fsync(fd)  # the rows are on disk before the record says so
        done.add(video.id)
        _write_json(out / PROGRESS_FILE, {"done": sorted(done)})

    try:
        for video, start in todo:
            n = len(video)
            if n == 0:
                video_finished(video)
                continue
            if isinstance(video.frames, FileFrames):
                remaining[video.id] = -(-n // CHUNK)
                for s in range(0, n, CHUNK):
                    paths = video.frames.paths[s:s + CHUNK]
                    task = (str(path), (start + s) * _frame_bytes(size), paths, size)
                    pending[executor.submit(_decode_into, *task)] = (len(pending), video)
            else:  # in-memory / memmap frames: no decoding, written here
                for s in range(0, n, CHUNK):
                    block = _resized(np.asarray(video.frames[s:s + CHUNK]), size)
                    _pwrite(fd, block, (start + s) * _frame_bytes(size))
                    chunk_written(len(block))
                video_finished(video)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: pending[f][0]):  # deterministic order
                _, video = pending.pop(future)
                try:
                    written = future.result()
                except (OSError, ValueError, RuntimeError) as e:
                    raise DataError(f"packing {out}", [str(e)]) from e
                remaining[video.id] -= 1
                if remaining[video.id] == 0:
                    video_finished(video)
                chunk_written(written)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        os.close(fd)


def _executor(pool: str, workers: int) -> Executor:
    if pool == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    if pool == "process":
        import multiprocessing

        # forkserver: no fork of a process that has threads (torch, Pillow's pool) running
        return ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("forkserver"))
    raise ValueError(f"pool must be 'thread' or 'process', got {pool!r}")


def _decode_into(frames_path: str, offset: int, paths: Sequence[str], size: tuple[int, int]) -> int:
    """One task: decode `paths` at `size` and write them at `offset`. Runs in a worker."""
    block = np.empty((len(paths), size[1], size[0], 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            block[i] = decode_frame(p, size)
        except Exception as e:  # noqa: BLE001 - any decoder failure names its file
            raise RuntimeError(f"{p}: cannot decode: {e}") from None
    fd = os.open(frames_path, os.O_WRONLY)
    try:
        _pwrite(fd, block, offset)
    finally:
        os.close(fd)
    return len(paths)


def _pwrite(fd: int, block: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(block)).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _resized(block: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """In-memory frames at another size are resized the way decode_frame resizes files."""
    if block.shape[1:] == (size[1], size[0], 3):
        return block.astype(np.uint8, copy=False)
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.asarray(f, dtype=np.uint8)).convert("RGB")
                                .resize(size, Image.BILINEAR)) for f in block])


def _write_index(out: Path, videos: Sequence[Video], tool_names: Sequence[str],
                 starts: Sequence[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = [len(v) for v in videos]
    n = sum(lengths)
    columns: dict[str, Any] = {
        "video": pa.array(np.repeat(np.array([v.id for v in videos], dtype=object), lengths),
                          pa.string()),
        "frame": pa.array(np.concatenate([np.arange(k, dtype=np.int32) for k in lengths])),
        "row": pa.array(np.concatenate([s + np.arange(k, dtype=np.int64)
                                        for s, k in zip(starts, lengths)])),
        "phase": pa.array(np.concatenate([np.asarray(v.phases) for v in videos]).astype(np.int16)),
    }
    tools = np.concatenate([np.asarray(v.tools, dtype=np.uint8).reshape(len(v), len(tool_names))
                            for v in videos])
    for k, name in enumerate(tool_names):
        columns[TOOL_PREFIX + name] = pa.array(tools[:, k])
    assert len(columns["row"]) == n
    with atomic_open(out / INDEX_FILE) as f:
        pq.write_table(pa.table(columns), f)


def _write_json(path: Path, data: dict) -> None:
    """Atomic and durable: a crash leaves the old file or the new one, never half of one."""
    atomic_write(path, json.dumps(data, indent=1))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------- reading


def _read_meta(path: Path) -> dict:
    meta_path = path / META_FILE
    if not meta_path.exists():
        what = "does not exist" if not path.exists() else f"has no {META_FILE}"
        raise DataError(str(path), [f"not a frame store: the directory {what} "
                                    "(pack one with `pitfalls data pack`)"])
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        problem = f"unreadable: {e}; delete the store and pack again"
        raise DataError(str(meta_path), [problem]) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(str(meta_path), [f"not a {FORMAT} meta file"])
    if meta.get("version") != VERSION:
        raise DataError(str(meta_path), [f"store version {meta.get('version')!r}, this code "
                                         f"reads version {VERSION}: pack it again"])
    missing = [k for k in ("dataset", "source", "size", "fps", "phase_names", "tool_names",
                           "videos", "frames", "complete") if k not in meta]
    if missing:
        raise DataError(str(meta_path), [f"missing keys: {missing}"])
    return meta


def _read_done(path: Path) -> set[str]:
    try:
        return set(json.loads((path / PROGRESS_FILE).read_text())["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # no usable record: nothing is trusted, everything is decoded again


def open_store(path: str | Path) -> StoreContents:
    """A packed store's videos; frames are read-only memmap views, labels from index.parquet."""
    path = Path(path)
    meta = _read_meta(path)
    if not meta["complete"]:
        done = _read_done(path)
        raise DataError(str(path), [
            f"incomplete store: {len(done)} of {len(meta['videos'])} videos packed; rerun "
            "`pitfalls data pack` with the same arguments to finish it"])
    width, height = meta["size"]
    n = int(meta["frames"])
    frames_path = path / FRAMES_FILE
    expected = n * _frame_bytes(meta["size"])
    have = frames_path.stat().st_size if frames_path.exists() else None
    if have != expected:
        raise DataError(str(frames_path), [
            f"{'missing' if have is None else f'{have} bytes'}, expected {expected} "
            f"({n} frames of {width}x{height}x3): the store is damaged; pack it again"])
    columns = _read_index(path, meta)
    mm = np.memmap(frames_path, dtype=np.uint8, mode="r", shape=(n, height, width, 3))
    tool_names = tuple(meta["tool_names"])
    videos = []
    for entry in meta["videos"]:
        s, k = entry["start"], entry["length"]
        tools = np.stack([columns[TOOL_PREFIX + t][s:s + k] for t in tool_names], axis=1) \
            if tool_names else np.zeros((k, 0), dtype=np.uint8)
        videos.append(Video(entry["id"], mm[s:s + k], columns["phase"][s:s + k].astype(np.int64),
                            tools.astype(np.uint8, copy=False)))
    return StoreContents(dataset=meta["dataset"], source=meta["source"], size=(width, height),
                         fps=float(meta["fps"]), phase_names=tuple(meta["phase_names"]),
                         tool_names=tool_names, videos=videos, path=path)


def _read_index(path: Path, meta: dict) -> dict[str, np.ndarray]:
    """index.parquet as numpy columns, checked against meta.json's video layout."""
    import pyarrow.parquet as pq

    index_path = path / INDEX_FILE
    try:
        table = pq.read_table(index_path)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise DataError(str(index_path), [f"unreadable: {e}; pack the store again"]) from e
    needed = ["video", "frame", "row", "phase"] + [TOOL_PREFIX + t for t in meta["tool_names"]]
    problems = [f"missing column {c!r}" for c in needed if c not in table.column_names]
    n = int(meta["frames"])
    if table.num_rows != n:
        problems.append(f"{table.num_rows} rows, meta.json says {n} frames")
    if problems:
        raise DataError(str(index_path), problems)
    columns = {c: table.column(c).to_numpy() for c in needed if c != "video"}
    entries = meta["videos"]
    lengths = [e["length"] for e in entries]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if [e["start"] for e in entries] != starts.tolist() or sum(lengths) != n:
        problems.append("meta.json videos are not back to back")
    elif not (np.array_equal(columns["row"], np.arange(n))
              and np.array_equal(columns["frame"], np.concatenate(
                  [np.arange(k) for k in lengths]) if lengths else np.zeros(0))
              and table.column("video").to_pylist() == [e["id"] for e in entries for _ in
                                                         range(e["length"])]):
        problems.append("rows do not match meta.json's videos (video, frame, row)")
    if problems:
        raise DataError(str(index_path), problems)
    return columns


# ---------------------------------------------------------------------------------- progress


def progress_bar(total: int, label: str = "packing", stream: Any = None) -> Progress:
    """A `progress(frames_done, frames_total)` callback drawing a tqdm bar on `stream` (default
    stderr): frames, %, frames/s, ETA; it closes (with a newline) when all frames are done."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit=" frames", file=stream or sys.stderr, mininterval=0.1)

    def update(done: int, new_total: int | None = None) -> None:
        if bar.disable:  # closed
            return
        if new_total is not None and new_total != bar.total:
            bar.total = new_total
        bar.update(done - bar.n)
        if done >= bar.total:
            bar.close()

    return update

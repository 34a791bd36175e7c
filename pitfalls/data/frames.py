"""A generic on-disk layout, so that a natural-video dataset needs no code of its own.

    ROOT/<video>/<anything with a frame number>.jpg|png   one folder of frames per video
    ROOT/labels.csv | labels.parquet                      one row per labelled frame

The labels file has a video column (the folder name), a frame column (the frame number in the
file name: the last run of digits in its stem), a phase column (names or
integer class indices), optional 0/1 tool columns and an optional `split` column
(train/val/test). A video is its labelled frames in frame-number order; image files without a
label row are ignored. Every problem found (missing columns, missing images, duplicate rows,
bad values, unknown split names) is collected and raised as one `DataError`.

The folder helpers here (`scan_frames`, `expected_name`, `missing_frames_message`) are shared
with the Cholec80 loader.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from pitfalls.data.base import (
    IMAGE_SUFFIXES,
    SPLIT_NAMES,
    DataError,
    FileFrames,
    FrameSize,
    SplitField,
    Video,
    VideoData,
    needs_root_or_store,
)
from pitfalls.fields import FORBID_EXTRA, Float, Problem, Text, Texts

SPLIT_COLUMN = "split"
MAX_PER_KIND = 10  # per file and kind of problem: one systematic mistake must not hide the others


Column = Annotated[str, Text()]


@dataclass(frozen=True)
class FramesOptions:
    """One folder of frames per video plus a CSV/Parquet file of per-frame labels."""

    __pydantic_config__ = FORBID_EXTRA

    root: Annotated[str | None, Text(optional=True)] = None
    store: Annotated[str | None, Text(optional=True)] = None
    labels: Column = "labels.csv"  # relative to root
    video_column: Column = "video"
    frame_column: Column = "frame"
    phase_column: Column = "phase"
    tool_columns: Annotated[tuple[str, ...], Texts()] = ()
    phases: Annotated[tuple[str, ...], Texts()] = ()  # class order; default: sorted label values
    # ((split, (video names...)), ...); None: the labels' split column
    split: Annotated[tuple | None, SplitField(str, optional=True)] = None
    frame_size: FrameSize = (224, 224)
    fps: Annotated[float, Float(ge=0.001)] = 1.0

    def problems(self) -> list[Problem]:
        return needs_root_or_store(self, "frames")

    def split_mapping(self) -> dict[str, list[str]] | None:
        return None if self.split is None else {k: list(v) for k, v in self.split}


# ---------------------------------------------------------------- frame folders (shared)

@dataclass(frozen=True)
class FrameFolder:
    """The image files (paths as str) of one video folder by frame number, and clashing numbers."""

    files: dict[int, str]
    duplicates: dict[int, list[str]]


_LAST_DIGITS = re.compile(r"(\d+)\D*$")


def scan_frames(folder: Path) -> FrameFolder:
    """Image files of one video folder by frame number; clashes (`5.jpg` + `00000005.png`) are
    kept to be reported, not silently resolved, and names are handled as strings (pathlib per
    file costs seconds on Cholec80's 10^5 frames)."""
    files: dict[int, str] = {}
    duplicates: dict[int, list[str]] = {}
    with os.scandir(folder) as entries:
        for e in entries:
            name = e.name
            dot = name.rfind(".")
            if dot <= 0 or name[dot:].lower() not in IMAGE_SUFFIXES:
                continue
            m = _LAST_DIGITS.search(name, 0, dot)  # the frame number: the last run of digits in the stem
            if m is None:
                continue
            n = int(m.group(1))
            if n in files:
                duplicates.setdefault(n, [files[n]]).append(e.path)
            else:
                files[n] = e.path
    return FrameFolder(files, duplicates)


def expected_name(example: str | Path, n: int) -> str:
    """The file name frame `n` would have, written like `example` (same prefix, padding, suffix)."""
    example = Path(example)
    stem = example.stem
    end = len(stem)
    while end and not stem[end - 1].isdigit():
        end -= 1
    start = end
    while start and stem[start - 1].isdigit():
        start -= 1
    width = end - start if stem[start:end].startswith("0") else 0
    return f"{stem[:start]}{n:0{width}d}{stem[end:]}{example.suffix}"


def missing_frames_message(shown_folder: str, example: str | Path, missing: Sequence[int], what: str = "") -> str:
    """One line naming the first few missing frame files by the path they should have."""
    names = [f"{shown_folder}/{expected_name(example, n)}" for n in missing[:5]]
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"missing frame file{'s' if len(missing) > 1 else ''} {', '.join(names)}{more}{what}"


def relative(path: Path, root: Path) -> str:
    """`path` as shown in messages: relative to the dataset root when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class Problems(list):
    """Problem lines, at most `MAX_PER_KIND` per (file, kind), then a count of what was left out."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, key: tuple[str, str], message: str) -> None:
        self._counts[key] += 1
        if self._counts[key] <= MAX_PER_KIND:
            self.append(message)

    def count_for(self, source: str) -> int:
        """How many problems (shown or not) were added for `source`."""
        return sum(n for (s, _), n in self._counts.items() if s == source)

    def close(self) -> list[str]:
        """The lines, with one `... and N more` line per (file, kind) that overflowed."""
        out = list(self)
        for (source, kind), n in self._counts.items():
            if n > MAX_PER_KIND:
                out.append(f"{source}: ... and {n - MAX_PER_KIND} more {kind} problem(s)")
        return out


# ---------------------------------------------------------------- the labels table

@dataclass(frozen=True)
class Labels:
    """The labels file as columns (row i of the file = index i)."""

    shown: str  # the file as named in messages
    csv: bool
    videos: list[Any]
    frames: np.ndarray
    phases: list[Any]
    phase_is_int: bool
    tools: np.ndarray  # (N, K) uint8
    split: list[Any] | None

    def row(self, i: int) -> str:
        return _row_name(self.shown, self.csv, i)


def _read_table(path: Path, shown: str, video_column: str):
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        import pyarrow.csv as pcsv

        strings = {video_column: pa.string(), SPLIT_COLUMN: pa.string()}
        parse = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        return pcsv.read_csv(path, parse_options=parse,
                             convert_options=pcsv.ConvertOptions(column_types=strings)), True
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(path), False
    raise DataError("frames dataset", [f"{shown}: unknown labels format {path.suffix!r}; "
                                       "use .csv or .parquet"])


def _row_name(shown: str, csv: bool, i: int) -> str:
    """Where data row i is: `labels.csv:LINE` (header = line 1) or `labels.parquet row N`."""
    return f"{shown}:{i + 2}" if csv else f"{shown} row {i + 1}"


def _column_values(table, name: str, shown: str, csv: bool, kind: str,
                   problems: Problems) -> tuple[list, bool]:
    """A column as Python values and whether its type is one of `kind` ('int|str'); nulls are reported."""
    import pyarrow as pa

    col = table.column(name)
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = t.value_type
    if pa.types.is_integer(t):
        found = "int"
    elif pa.types.is_boolean(t):
        found = "bool"
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        found = "str"
    else:
        found = str(t)
    values = col.to_pylist()
    if col.null_count:
        for i, v in enumerate(values):
            if v is None:
                problems.add((shown, f"empty {name}"), f"{_row_name(shown, csv, i)}: empty {name!r} value")
    ok = found in kind.split("|")
    if not ok:
        example = next(((i, v) for i, v in enumerate(values) if v is not None), None)
        hint = f" ({_row_name(shown, csv, example[0])}: {example[1]!r})" if example else ""
        problems.add((shown, f"{name} type"),
                     f"{shown}: column {name!r} must hold {' or '.join(kind.split('|'))} values, "
                     f"found {found}{hint}")
    return values, ok


def read_labels(path: Path, shown: str, video_column: str, frame_column: str, phase_column: str,
                tool_columns: Sequence[str], problems: Problems) -> Labels | None:
    """Read and type-check the labels file; None (with the reasons in `problems`) when unusable."""
    if not path.is_file():
        problems.add((shown, "file"), f"{shown}: labels file not found")
        return None
    try:
        table, csv = _read_table(path, shown, video_column)
    except DataError as e:
        problems.extend(e.problems)
        return None
    except Exception as e:  # noqa: BLE001 - pyarrow: malformed CSV rows, unreadable parquet
        problems.add((shown, "file"), f"{shown}: cannot read: {e}")
        return None
    present = table.column_names
    needed = [video_column, frame_column, phase_column, *tool_columns]
    missing = [c for c in needed if c not in present]
    for c in missing:
        problems.add((shown, "column"), f"{shown}: missing column {c!r}; columns present: {', '.join(present)}")
    if missing:
        return None
    videos, ok_v = _column_values(table, video_column, shown, csv, "str|int", problems)
    videos = [v if v is None or isinstance(v, str) else str(v) for v in videos]  # folder names
    frames, ok_f = _column_values(table, frame_column, shown, csv, "int", problems)
    phases, ok_p = _column_values(table, phase_column, shown, csv, "int|str", problems)
    tools = np.zeros((table.num_rows, len(tool_columns)), dtype=np.uint8)
    for k, name in enumerate(tool_columns):
        values, ok = _column_values(table, name, shown, csv, "int|bool", problems)
        for i, v in enumerate(values if ok else ()):
            if v is None:
                continue
            if isinstance(v, (bool, int)) and v in (0, 1):
                tools[i, k] = int(v)
            else:
                problems.add((shown, f"{name} value"),
                             f"{_row_name(shown, csv, i)}: tool {name!r} is {v!r}, expected 0 or 1")
    split = None
    if SPLIT_COLUMN in present:
        split, _ = _column_values(table, SPLIT_COLUMN, shown, csv, "str", problems)
    if not (ok_v and ok_f and ok_p) or any(None in c for c in (videos, frames, phases)):
        return None
    phase_is_int = not phases or isinstance(phases[0], int)
    return Labels(shown, csv, videos, np.asarray(frames, dtype=np.int64), phases, phase_is_int, tools, split)


def phase_indices(labels: Labels, phases: Sequence[str], problems: Problems) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, per-row class index): names from `phases`, else sorted strings / "0".."max"."""
    values = labels.phases
    out = np.zeros(len(values), dtype=np.int64)
    if labels.phase_is_int:
        ints = np.asarray(values, dtype=np.int64)
        names = tuple(phases) if phases else tuple(str(i) for i in range(int(ints.max(initial=-1)) + 1))
        bad = np.flatnonzero((ints < 0) | (ints >= len(names)))
        for i in bad:
            valid = f"0..{len(names) - 1} ({', '.join(names)})" if phases else "a non-negative integer"
            problems.add((labels.shown, "phase value"),
                         f"{labels.row(int(i))}: phase {int(ints[i])} is not a valid class index, expected {valid}")
        return names, ints
    names = tuple(phases) if phases else tuple(sorted(set(values)))
    lookup = {n: i for i, n in enumerate(names)}
    unknown: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        j = lookup.get(v)
        if j is None:
            unknown.setdefault(v, []).append(i)
        else:
            out[i] = j
    for v, rows in unknown.items():
        problems.add((labels.shown, "phase value"),
                     f"{labels.row(rows[0])}: unknown phase {v!r} ({len(rows)} row(s)); "
                     f"valid phases: {', '.join(names)}")
    return names, out


# ---------------------------------------------------------------- splits

def column_splits(labels: Labels, problems: Problems) -> dict[str, list[str]] | None:
    """Video names per split from the `split` column: one known split name per video."""
    if labels.split is None:
        return None
    seen: dict[str, tuple[str, int]] = {}
    out: dict[str, list[str]] = {}
    for i, (video, s) in enumerate(zip(labels.videos, labels.split)):
        if s not in SPLIT_NAMES:
            problems.add((labels.shown, "split value"),
                         f"{labels.row(i)}: split {s!r} is not one of {', '.join(SPLIT_NAMES)}")
            continue
        if video not in seen:
            seen[video] = (s, i)
            out.setdefault(s, []).append(video)
        elif seen[video][0] != s:
            first, j = seen[video]
            problems.add((labels.shown, "split value"),
                         f"{labels.row(i)}: video {video!r} has split {s!r} but {labels.row(j)} says {first!r}")
    return {k: sorted(out[k]) for k in SPLIT_NAMES if k in out}


def check_split(split: Mapping[str, Sequence[str]], known: set[str], source: str,
                problems: Problems) -> dict[str, list[str]]:
    """A split mapping checked: known split names and videos, no video twice, train and val non-empty."""
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for key, names in split.items():
        if key not in SPLIT_NAMES:
            problems.add((source, "split"), f"{source}: unknown split {key!r}; valid: {', '.join(SPLIT_NAMES)}")
            continue
        if isinstance(names, str):
            names = [names]
        out[key] = []
        for name in names:
            name = str(name)
            if name not in known:
                problems.add((source, "split"), f"{source}: {key} lists video {name!r}, which is not in the "
                                                f"labels file")
            elif name in owner:
                problems.add((source, "split"), f"{source}: video {name!r} is in both {owner[name]} and {key}")
            else:
                owner[name] = key
                out[key].append(name)
    for key in ("train", "val"):
        if key not in split or not list(split[key]):
            problems.add((source, "split"), f"{source}: {key!r} is empty")
    return out


# ---------------------------------------------------------------- videos

def _video(name: str, rows: np.ndarray, labels: Labels, root: Path, classes: np.ndarray,
           size: tuple[int, int] | None, problems: Problems) -> Video | None:
    """One video: its rows sorted by frame number, each with its image file."""
    folder = root / name
    if not folder.is_dir():
        problems.add((name, "folder"), f"{name}/: video folder not found under {root} "
                                       f"(labelled at {labels.row(int(rows[0]))})")
        return None
    rows = rows[np.argsort(labels.frames[rows], kind="stable")]
    numbers = labels.frames[rows]
    ok = True
    for j in np.flatnonzero(np.diff(numbers) == 0):
        ok = False
        problems.add((labels.shown, "duplicate"),
                     f"{labels.row(int(rows[j + 1]))}: duplicate row for video {name!r} frame {int(numbers[j])} "
                     f"(also {labels.row(int(rows[j]))})")
    found = scan_frames(folder)
    example = next(iter(found.files.values()), "00000000.jpg")
    paths = []
    for i, n in zip(rows, numbers):
        n = int(n)
        p = found.files.get(n)
        if p is None:
            ok = False
            problems.add((name, "missing"), f"{name}/{expected_name(example, n)}: no image file for frame {n} "
                                            f"(labelled at {labels.row(int(i))})")
        elif n in found.duplicates:
            ok = False
            clash = ", ".join(f"{name}/{os.path.basename(q)}" for q in found.duplicates[n])
            problems.add((name, "missing"), f"{name}/: several image files for frame {n}: {clash}")
        paths.append(p)
    if not ok:
        return None
    return Video(id=name, frames=FileFrames(paths, size), phases=classes[rows].astype(np.int64),
                 tools=labels.tools[rows])


def read_videos(root: str | Path, labels: str | Path = "labels.csv", video_column: str = "video",
                frame_column: str = "frame", phase_column: str = "phase", tool_columns: Sequence[str] = (),
                phases: Sequence[str] = (), split: Mapping[str, Sequence[str]] | None = None,
                size: tuple[int, int] | None = None
                ) -> tuple[tuple[str, ...], tuple[str, ...], list[Video], dict[str, list[str]] | None]:
    """(phase names, tool names, videos, splits); raises one DataError listing every problem.

    The splits are `split` when given (checked against the labels; only its videos are read),
    else the labels file's `split` column, else None. Videos are sorted by name.
    """
    root = Path(root)
    path = Path(labels) if Path(labels).is_absolute() else root / labels
    shown = relative(path, root)
    problems = Problems()
    table = read_labels(path, shown, video_column, frame_column, phase_column, tool_columns, problems)
    if table is None:
        raise DataError(f"frames dataset at {root}", problems.close())
    names, classes = phase_indices(table, phases, problems)
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(table.videos):
        by_video[v].append(i)
    if split is not None:
        splits = check_split(split, set(by_video), "split", problems)
    else:
        splits = column_splits(table, problems)
    wanted = sorted({v for vs in splits.values() for v in vs}) if split is not None else sorted(by_video)
    videos = []
    for name in wanted:
        video = _video(name, np.asarray(by_video[name]), table, root, classes, size, problems)
        if video is not None:
            videos.append(video)
    if problems:
        raise DataError(f"frames dataset at {root}", problems.close())
    return names, tuple(tool_columns), videos, splits


def load(root: str | Path, labels: str | Path = "labels.csv", video_column: str = "video",
         frame_column: str = "frame", phase_column: str = "phase", tool_columns: Sequence[str] = (),
         phases: Sequence[str] = (), split: Mapping[str, Sequence[str]] | None = None,
         size: tuple[int, int] | None = None, fps: float = 1.0) -> VideoData:
    """The dataset as `VideoData`; `split` (name -> video names) or else the labels' split column."""
    names, tools, videos, splits = read_videos(root, labels, video_column, frame_column, phase_column,
                                               tool_columns, phases, split, size)
    if splits is None:
        raise DataError(f"frames dataset at {root}", [
            f"no split given and the labels file has no {SPLIT_COLUMN!r} column; pass split="
            "{'train': [...], 'val': [...]} or add a split column (train/val/test)"])
    if split is None:  # the split column: train and val must be there too
        problems = Problems()
        for key in ("train", "val"):
            if not splits.get(key):
                problems.add(("split", key), f"split column: no video has split {key!r}")
        if problems:
            raise DataError(f"frames dataset at {root}", problems.close())
    by_name = {v.id: v for v in videos}
    return VideoData(name="frames", phase_names=names, tool_names=tools,
                     splits={k: [by_name[n] for n in vs] for k, vs in splits.items()}, fps=fps)


def read(options: FramesOptions) -> VideoData:
    """The dataset of a study's options (`dataset.options`), from the files under `root`."""
    o = options
    return load(o.root, labels=o.labels, video_column=o.video_column, frame_column=o.frame_column,
                phase_column=o.phase_column, tool_columns=o.tool_columns, phases=o.phases,
                split=o.split_mapping(), size=o.frame_size, fps=o.fps)

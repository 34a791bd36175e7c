"""Cholec80, read from the files exactly as distributed (plus frames extracted by the user).

Layout under ROOT:

    frames/NN/%08d.jpg|png                 frames extracted at `fps` (default 1 per second);
                                           folder NN may be `01`, `1` or `video01` (id = the digits)
    phase_annotations/videoNN-phase.txt    `Frame<TAB>Phase` header, one row per 25-fps frame
    tool_annotations/videoNN-tool.txt      `Frame Grasper ... SpecimenBag` header, a row per 25 frames

Alignment. Frame files are taken in numeric order (numbering may start at 0 or 1); the k-th one
(0-based) is extracted frame k, which shows 25-fps frame f = round(25 * k / fps) (halves round
up). Its phase is that of the phase row with the largest Frame <= f, its tools those of the tool
row with the largest Frame <= f (`np.searchsorted(..., side="right") - 1`). With the last phase
row at Frame L (L + 1 = the number of rows in the distributed files), the video has
ceil((L + 1) * fps / 25) extracted frames. A folder holding more or fewer frames than that by
more than one second (more than max(fps, 1) frames) is an error (wrong video, wrong fps); within
that tolerance extra trailing frames, which no annotation covers, are dropped and missing
trailing frames are fine.

Every problem found (files missing or malformed, unknown phase names, gaps in the frame
numbering, counts that disagree, bad splits) is collected across all requested videos and raised
as one `DataError`, before anything is trained. Messages name the file relative to ROOT and, in
annotation files, the 1-based line (header = line 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from pitfalls.data.base import (
    SPLIT_NAMES,
    DataError,
    FileFrames,
    FrameSize,
    SplitField,
    Video,
    VideoData,
    needs_root_or_store,
)
from pitfalls.data.frames import Problems, missing_frames_message, scan_frames
from pitfalls.fields import FORBID_EXTRA, Float, Problem, Text

PHASES: tuple[str, ...] = ("Preparation", "CalotTriangleDissection", "ClippingCutting",
                           "GallbladderDissection", "GallbladderPackaging", "CleaningCoagulation",
                           "GallbladderRetraction")
TOOLS: tuple[str, ...] = ("Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag")
ANTICIPATION_TOOLS = ("Bipolar", "Scissors", "Clipper", "Irrigator", "SpecimenBag")
ANNOTATION_FPS = 25

SPLITS: dict[str, dict[str, tuple[int, ...]]] = {
    "40/8/32": {"train": tuple(range(1, 41)), "val": tuple(range(41, 49)), "test": tuple(range(49, 81))},
    "32/8/40": {"train": tuple(range(1, 33)), "val": tuple(range(33, 41)), "test": tuple(range(41, 81))},
}

FRAMES_DIR, PHASE_DIR, TOOL_DIR = "frames", "phase_annotations", "tool_annotations"


@dataclass(frozen=True)
class Cholec80Options:
    """Cholec80 as distributed (frames extracted at `fps`), or its packed store."""

    __pydantic_config__ = FORBID_EXTRA

    root: Annotated[str | None, Text(optional=True)] = None  # frames/, phase_annotations/, tool_annotations/
    # a packed store (`pitfalls data pack`): read instead of decoding
    store: Annotated[str | None, Text(optional=True)] = None
    split: Annotated[str | tuple, SplitField(int, tuple(SPLITS))] = "40/8/32"
    frame_size: FrameSize = (384, 216)  # (W, H) the frames are resized to
    fps: Annotated[float, Float(ge=0.001)] = 1.0

    def problems(self) -> list[Problem]:
        return needs_root_or_store(self, "cholec80")

    def split_mapping(self) -> str | dict[str, list[int]]:
        return self.split if isinstance(self.split, str) else {k: list(v) for k, v in self.split}
PHASE_HEADER = ("Frame", "Phase")
TOOL_HEADER = ("Frame", *TOOLS)
_FOLDER = re.compile(r"^(?:video)?(\d+)$", re.IGNORECASE)
_PHASE_FILE = re.compile(r"^video(\d+)-phase\.txt$", re.IGNORECASE)
_TOOL_FILE = re.compile(r"^video(\d+)-tool\.txt$", re.IGNORECASE)


def phase_path(i: int) -> str:
    return f"{PHASE_DIR}/video{i:02d}-phase.txt"


def tool_path(i: int) -> str:
    return f"{TOOL_DIR}/video{i:02d}-tool.txt"


def video_name(i: int) -> str:
    return f"video{i:02d}"


# ---------------------------------------------------------------- what is on disk

@dataclass
class Found:
    """The files one video id has on disk (None: absent)."""

    frames: Path | None = None
    phase: Path | None = None
    tool: Path | None = None


def _scan_dir(folder: Path, pattern: re.Pattern, want_dir: bool) -> dict[int, list[Path]]:
    out: dict[int, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = pattern.match(p.name)
            if m and p.is_dir() == want_dir:
                out.setdefault(int(m.group(1)), []).append(p)
    return out


def discover(root: Path) -> tuple[dict[int, Found], list[str]]:
    """Every video id with a frame folder or an annotation file, and clashes (`frames/1` + `frames/01`)."""
    problems = []
    if not root.is_dir():
        return {}, [f"{root}: dataset folder not found"]
    if not any((root / d).is_dir() for d in (FRAMES_DIR, PHASE_DIR, TOOL_DIR)):
        return {}, [f"{root}: none of {FRAMES_DIR}/, {PHASE_DIR}/, {TOOL_DIR}/ found; expected "
                    f"{FRAMES_DIR}/NN/%08d.jpg and {PHASE_DIR}/videoNN-phase.txt"]
    found: dict[int, Found] = {}
    for folder, pattern, want_dir, attr in ((FRAMES_DIR, _FOLDER, True, "frames"),
                                            (PHASE_DIR, _PHASE_FILE, False, "phase"),
                                            (TOOL_DIR, _TOOL_FILE, False, "tool")):
        for i, paths in _scan_dir(root / folder, pattern, want_dir).items():
            if len(paths) > 1:
                names = ", ".join(f"{folder}/{p.name}" for p in paths)
                problems.append(f"video {i}: several {attr} entries for the same id: {names}")
            setattr(found.setdefault(i, Found()), attr, paths[0])
    return found, problems


def video_ids(root: str | Path) -> list[int]:
    """Ids that have a frame folder or an annotation file (raises DataError if ROOT is not a dataset)."""
    found, problems = discover(Path(root))
    if not found and problems:
        raise DataError(f"cholec80 dataset at {root}", problems)
    return sorted(found)


# ---------------------------------------------------------------- annotation files

@dataclass(frozen=True)
class Annotation:
    """One parsed annotation file: strictly increasing Frame column starting at 0, and its values."""

    frames: np.ndarray  # (N,) int64
    values: np.ndarray  # phases: (N,) int64; tools: (N, 7) uint8


_PHASE_INDEX = {name: i for i, name in enumerate(PHASES)}


def _lines(path: Path) -> list[str]:
    """The file's lines, BOM and trailing blank lines removed (CRLF files read like LF ones)."""
    lines = path.read_bytes().decode("utf-8-sig", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _fast_parse(path: Path, header: tuple[str, ...], phases: bool) -> Annotation | None:
    """The whole file at C speed (pyarrow) when it is well formed, tab-separated; None sends it to
    the line-by-line checker, which is the reference: this path accepts nothing that one rejects."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = {header[0]: pa.int64(), **({header[1]: pa.dictionary(pa.int32(), pa.string())} if phases
                                       else {name: pa.int64() for name in header[1:]})}
    try:
        table = pcsv.read_csv(
            path, parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False))
    except (pa.ArrowException, ValueError):  # malformed somewhere: let the checker say where
        return None
    if tuple(table.column_names) != header or table.num_rows == 0:
        return None
    if any(col.null_count for col in table.columns):
        return None
    frames = table.column(0).to_numpy()
    if frames[0] != 0 or not np.all(frames[1:] > frames[:-1]):
        return None
    if phases:
        chunks = []
        for chunk in table.column(1).chunks:
            lut = np.array([_PHASE_INDEX.get(v, -1) for v in chunk.dictionary.to_pylist()] + [-1], dtype=np.int64)
            chunks.append(lut[chunk.indices.to_numpy(zero_copy_only=False)])
        values = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        if np.any(values < 0):
            return None
    else:
        cells = np.stack([col.to_numpy() for col in table.columns[1:]], axis=1)
        if not np.all((cells == 0) | (cells == 1)):
            return None
        values = cells.astype(np.uint8)
    return Annotation(frames.astype(np.int64), values)


def _slow_parse(lines: list[str], header: tuple[str, ...], phases: bool, shown: str,
                problems: Problems) -> Annotation | None:
    """Line by line, naming every problem by file:line; the annotation if there was none."""
    before = problems.count_for(shown)
    got = tuple(lines[0].split())
    if got != header:
        problems.add((shown, "header"), f"{shown}:1: wrong header {lines[0]!r}, expected {chr(9).join(header)!r}")
    if len(lines) < 2:
        problems.add((shown, "empty"), f"{shown}: empty annotation file (a header but no rows)")
    frames, values = [], []
    unknown: dict[str, list[int]] = {}
    prev, prev_line = None, 0
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) != len(header):
            what = "blank line" if not fields else repr(line)
            problems.add((shown, "field count"), f"{shown}:{lineno}: expected {len(header)} fields "
                                                 f"({', '.join(header)}), got {len(fields)}: {what}")
            continue
        try:
            frame = int(fields[0])
        except ValueError:
            problems.add((shown, "frame"), f"{shown}:{lineno}: Frame {fields[0]!r} is not an integer")
            continue
        if prev is None and frame != 0:
            problems.add((shown, "frame"), f"{shown}:{lineno}: first Frame is {frame}; annotations must "
                                           "start at Frame 0")
        elif prev is not None and frame <= prev:
            problems.add((shown, "order"), f"{shown}:{lineno}: Frame {frame} is not greater than the previous "
                                           f"Frame {prev} (line {prev_line}); Frame must strictly increase")
        prev, prev_line = frame, lineno
        if phases:
            index = _PHASE_INDEX.get(fields[1])
            if index is None:
                unknown.setdefault(fields[1], []).append(lineno)
                continue
            frames.append(frame)
            values.append(index)
        else:
            bad = [(name, v) for name, v in zip(header[1:], fields[1:]) if v not in ("0", "1")]
            for name, v in bad:
                problems.add((shown, "tool value"), f"{shown}:{lineno}: {name} is {v!r}, expected 0 or 1")
            frames.append(frame)
            values.append([v == "1" for v in fields[1:]])
    for name, at in unknown.items():
        problems.add((shown, "phase"), f"{shown}:{at[0]}: unknown phase {name!r}"
                                       f"{f' ({len(at)} lines)' if len(at) > 1 else ''}; "
                                       f"valid phases: {', '.join(PHASES)}")
    if problems.count_for(shown) > before:
        return None
    return Annotation(np.asarray(frames, dtype=np.int64),
                      np.asarray(values, dtype=np.int64 if phases else np.uint8))


def read_annotation(path: Path, shown: str, phases: bool, problems: Problems) -> Annotation | None:
    """A phase (`phases=True`) or tool file; None, with every reason in `problems`, when it is broken."""
    header = PHASE_HEADER if phases else TOOL_HEADER
    try:
        if path.stat().st_size and (fast := _fast_parse(path, header, phases)) is not None:
            return fast
        lines = _lines(path)
    except OSError as e:
        problems.add((shown, "read"), f"{shown}: cannot read: {e}")
        return None
    if not lines:
        problems.add((shown, "empty"), f"{shown}: empty annotation file")
        return None
    return _slow_parse(lines, header, phases, shown, problems)


# ---------------------------------------------------------------- frame folders

def _frame_paths(folder: Path, shown: str, problems: Problems) -> list[str] | None:
    """The folder's frames in numeric order, or None after naming the gaps/clashes in `problems`."""
    found = scan_frames(folder)
    if not found.files:
        problems.add((shown, "frames"), f"{shown}/: no frame images (.jpg/.png)")
        return None
    numbers = sorted(found.files)
    first, last = numbers[0], numbers[-1]
    ok = True
    if first > 1:
        ok = False
        problems.add((shown, "frames"), f"{shown}/: frame numbering starts at {first} "
                                        f"({shown}/{Path(found.files[first]).name}); expected 0 or 1")
    elif last - first + 1 != len(numbers):
        ok = False
        missing = sorted(set(range(first, last + 1)) - set(numbers))
        problems.add((shown, "frames"), missing_frames_message(shown, found.files[first], missing,
                                                               f" (numbering {first}..{last} has gaps)"))
    for n, paths in list(found.duplicates.items())[:5]:
        ok = False
        problems.add((shown, "frames"), f"{shown}/: several files for frame {n}: "
                                        f"{', '.join(shown + '/' + Path(p).name for p in paths)}")
    return [found.files[n] for n in numbers] if ok else None


def expected_frames(phase: Annotation, fps: float) -> int:
    """How many frames extracted at `fps` the annotated 25-fps video has (see module docstring)."""
    return math.ceil((int(phase.frames[-1]) + 1) * fps / ANNOTATION_FPS - 1e-9)


def align(n: int, phase: Annotation, tool: Annotation, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per extracted frame k < n: the phase and tools of the last rows at or before 25-fps frame round(25k/fps)."""
    f25 = np.floor(np.arange(n) * (ANNOTATION_FPS / fps) + 0.5).astype(np.int64)
    phases = phase.values[np.searchsorted(phase.frames, f25, side="right") - 1]
    tools = tool.values[np.searchsorted(tool.frames, f25, side="right") - 1]
    return phases.astype(np.int64), tools.astype(np.uint8)


def _read_video(i: int, found: Found, size: tuple[int, int] | None, fps: float,
                problems: Problems) -> Video | None:
    """One video checked and aligned; None, with every reason in `problems`, when anything is wrong."""
    if found.frames is None:
        have = phase_path(i) if found.phase is not None else tool_path(i)
        problems.add((video_name(i), "files"), f"video {i}: {have} exists but there is no frame folder "
                                               f"{FRAMES_DIR}/{i:02d}/")
        return None
    shown_frames = f"{FRAMES_DIR}/{found.frames.name}"
    paths = _frame_paths(found.frames, shown_frames, problems)
    phase = tool = None
    for attr, shown, is_phase in (("phase", phase_path(i), True), ("tool", tool_path(i), False)):
        path = getattr(found, attr)
        if path is None:
            count = f" ({len(paths)} frames)" if paths else ""
            problems.add((video_name(i), "files"), f"video {i}: {shown} is missing for {shown_frames}/{count}")
            continue
        shown = f"{path.parent.name}/{path.name}"
        parsed = read_annotation(path, shown, is_phase, problems)
        if is_phase:
            phase = parsed
        else:
            tool = parsed
    if paths is None or phase is None or tool is None:
        return None
    expected = expected_frames(phase, fps)
    if abs(len(paths) - expected) > max(fps, 1.0):
        shown_phase = f"{found.phase.parent.name}/{found.phase.name}"
        problems.add((video_name(i), "count"),
                     f"{shown_frames}/ has {len(paths)} frames but {shown_phase} annotates "
                     f"{int(phase.frames[-1]) + 1} frames at {ANNOTATION_FPS} fps = {expected} frames at "
                     f"{fps:g} fps ({len(paths) - expected:+d}, more than one second off: wrong video or fps?)")
        return None
    paths = paths[:expected]  # trailing frames past the annotations have no label
    phases, tools = align(len(paths), phase, tool, fps)
    return Video(id=video_name(i), frames=FileFrames(paths, size), phases=phases, tools=tools)


def read_videos(root: str | Path, ids: Sequence[int] | None = None, size: tuple[int, int] | None = None,
                fps: float = 1.0) -> list[Video]:
    """The videos `ids` (default: every id found), checked; raises one DataError listing every problem."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    root = Path(root)
    found, problems_found = discover(root)
    problems = Problems()
    problems.extend(problems_found)
    videos = []
    for i in (sorted(found) if ids is None else ids):
        if i not in found:
            problems.add(("ids", "missing"), f"video {i}: not in the dataset (no {FRAMES_DIR}/{i:02d}/ and "
                                             f"no {phase_path(i)})")
            continue
        video = _read_video(i, found[i], size, fps, problems)
        if video is not None:
            videos.append(video)
    if problems:
        raise DataError(f"cholec80 dataset at {root}", problems.close())
    return videos


# ---------------------------------------------------------------- splits

def _ranges(ids: Sequence[int]) -> str:
    """`[1, 2, 3, 7]` -> `1-3, 7`: short lists of ids in messages."""
    out, ids = [], sorted(set(ids))
    start = prev = None
    for i in ids + [None]:
        if start is not None and i != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if start is None:
            start = i
        prev = i
    return ", ".join(out) or "none"


def split_problems(split: str | Mapping[str, Sequence[int]],
                   available: Sequence[int]) -> tuple[dict[str, list[int]], list[str]]:
    """The split resolved to ids (unusable ids left out) and everything wrong with it."""
    if isinstance(split, str):
        if split not in SPLITS:
            return {}, [f"unknown split {split!r}; valid: {', '.join(SPLITS)} or a mapping "
                        "{'train': [ids], 'val': [ids], 'test': [ids]}"]
        parts, source = SPLITS[split], f"split {split}"
    elif isinstance(split, Mapping):
        parts, source = split, "custom split"
    else:
        return {}, [f"split must be one of {', '.join(SPLITS)} or a mapping of train/val/test to ids, "
                    f"got {split!r}"]
    problems: list[str] = []
    have = set(available)
    owner: dict[int, str] = {}
    out: dict[str, list[int]] = {}
    for key, ids in parts.items():
        if key not in SPLIT_NAMES:
            problems.append(f"{source}: unknown part {key!r}; valid: {', '.join(SPLIT_NAMES)}")
            continue
        out[key], absent = [], []
        for i in ([ids] if isinstance(ids, (int, str)) else ids):
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                problems.append(f"{source}: {key} id {i!r} is not an integer video id")
            elif int(i) in owner:
                problems.append(f"{source}: video {int(i)} is in both {owner[int(i)]} and {key}")
            elif int(i) not in have:
                absent.append(int(i))
            else:
                owner[int(i)] = key
                out[key].append(int(i))
        if absent:
            problems.append(f"{source}: {key} video(s) {_ranges(absent)} not found in the dataset root "
                            f"(found videos: {_ranges(list(have))})")
    for key in ("train", "val"):
        if not list(parts.get(key) or ()):
            problems.append(f"{source}: {key!r} is empty")
    return out, problems


def resolve_split(split: str | Mapping[str, Sequence[int]], available: Sequence[int]) -> dict[str, list[int]]:
    """`"40/8/32"`, `"32/8/40"` or `{"train": [...], "val": [...], "test": [...]}` -> ids per part."""
    parts, problems = split_problems(split, available)
    if problems:
        raise DataError("cholec80 split", problems)
    return parts


def load(root: str | Path, split: str | Mapping[str, Sequence[int]] = "40/8/32",
         size: tuple[int, int] | None = None, fps: float = 1.0) -> VideoData:
    """Cholec80 as `VideoData`, reading and checking only the split's videos (one DataError for all)."""
    root = Path(root)
    parts, problems = split_problems(split, video_ids(root))
    ids = [i for part in parts.values() for i in part]
    try:
        videos = {v.id: v for v in read_videos(root, ids, size, fps)}
    except DataError as e:
        raise DataError(f"cholec80 dataset at {root}", problems + e.problems) from None
    if problems:
        raise DataError(f"cholec80 dataset at {root}", problems)
    return VideoData(name="cholec80", phase_names=PHASES, tool_names=TOOLS, fps=fps, index_fps=ANNOTATION_FPS,
                     splits={k: [videos[video_name(i)] for i in part] for k, part in parts.items()})


def read(options: Cholec80Options) -> VideoData:
    """The dataset of a study's options (`dataset.options`), from the files under `root`."""
    return load(options.root, split=options.split_mapping(), size=options.frame_size, fps=options.fps)


def store_splits(options: Cholec80Options, ids: list[str], store: Path) -> dict[str, list[str]]:
    """A packed store's video ids (`video01`, ...) per part of the study's split."""
    numbers = {int("".join(c for c in i if c.isdigit())): i for i in ids}
    resolved = resolve_split(options.split_mapping(), sorted(numbers))
    return {k: [numbers[n] for n in v] for k, v in resolved.items()}

"""Per-frame phase files: reading any the community passes around, writing Cholec80's format.

Read: Cholec80's annotations (a `Frame<TAB>Phase` header, one row per 25-fps frame, phase names)
and the 1-fps exports other models' repositories publish (frame index and a phase number 0..6,
with or without a header); fields are split on whitespace. Written: Cholec80's format (header,
the dataset's frame indices, phase names), so any evaluator reads what a trial predicted.

A prediction is matched to its ground truth by frame index: its frames must be ground-truth
frames, in increasing order, on a regular grid from the truth's first to its last frame (1-fps
rows of a 25-fps annotation are such a grid). Every problem is reported with file and line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pitfalls.fileio import atomic_write

HEADER = "Frame\tPhase"
ANNOTATION_FPS = 25.0  # Cholec80's frame indices count the 25-fps video's frames
FILE_PATTERN = re.compile(r"^(?P<video>.+)-phase\.txt$")


class PhaseFileError(ValueError):
    """A phase file that cannot be scored: the file, the line, what is wrong."""


@dataclass(frozen=True)
class PhaseFile:
    path: Path
    frames: np.ndarray  # (N,) int64 frame indices as written
    phases: np.ndarray  # (N,) int64, 0-based phase index
    lines: np.ndarray  # (N,) the 1-based line of each row
    named: bool  # phases were written as names (Cholec80's annotation format)
    header: bool


def read_phase_file(path: str | Path, phase_names: Sequence[str]) -> PhaseFile:
    """Rows of `frame phase`, phase as a name of `phase_names` or a number 0..K-1."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PhaseFileError(f"{path}: cannot read: {e}") from None
    by_name = {n: i for i, n in enumerate(phase_names)}
    frames, phases, lines, named, header = [], [], [], set(), False
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise PhaseFileError(f"{path}:{number}: expected two fields (frame, phase), got {line!r}")
        frame, phase = fields
        if not frames and not header and not frame.lstrip("-").isdigit():
            header = True  # a first row that is not a frame number: the header
            continue
        if not frame.isdigit():
            raise PhaseFileError(f"{path}:{number}: frame {frame!r} is not a non-negative integer")
        if phase in by_name:
            index, kind = by_name[phase], "name"
        elif phase.isdigit() and int(phase) < len(phase_names):
            index, kind = int(phase), "number"
        else:
            raise PhaseFileError(f"{path}:{number}: unknown phase {phase!r}; valid: the names "
                                 f"{', '.join(phase_names)} or the numbers 0..{len(phase_names) - 1}")
        frames.append(int(frame))
        phases.append(index)
        lines.append(number)
        named.add(kind)
    if not frames:
        raise PhaseFileError(f"{path}: holds no rows")
    f = np.asarray(frames, dtype=np.int64)
    if (bad := np.flatnonzero(np.diff(f) <= 0)).size:
        i = int(bad[0]) + 1
        raise PhaseFileError(f"{path}:{lines[i]}: frame {f[i]} does not come after frame {f[i - 1]} "
                             "(rows must be in increasing frame order, each frame once)")
    return PhaseFile(path, f, np.asarray(phases, dtype=np.int64), np.asarray(lines), named == {"name"}, header)


def match(gt: PhaseFile, pred: PhaseFile) -> np.ndarray:
    """The ground-truth phases at the prediction's frames; refuses a prediction that lacks
    frames, has frames the truth lacks, or leaves gaps."""
    where = np.searchsorted(gt.frames, pred.frames)
    inside = (where < len(gt.frames)) & (gt.frames[np.minimum(where, len(gt.frames) - 1)] == pred.frames)
    if not inside.all():
        i = int(np.flatnonzero(~inside)[0])
        raise PhaseFileError(f"{pred.path}:{pred.lines[i]}: frame {pred.frames[i]} is not in the ground "
                             f"truth {gt.path.name} (frames {gt.frames[0]}..{gt.frames[-1]}): an extra frame")
    step = float(np.median(np.diff(pred.frames))) if len(pred.frames) > 1 else 1.0
    gaps = np.flatnonzero(np.diff(pred.frames) > 1.5 * step)
    if pred.frames[0] - gt.frames[0] >= step:
        raise PhaseFileError(f"{pred.path}: lacks frames: it starts at frame {pred.frames[0]}, the ground "
                             f"truth at {gt.frames[0]}")
    if gaps.size:
        i = int(gaps[0])
        raise PhaseFileError(f"{pred.path}:{pred.lines[i + 1]}: lacks frames: nothing between frame "
                             f"{pred.frames[i]} and {pred.frames[i + 1]} (rows every {step:g} frames elsewhere)")
    if gt.frames[-1] - pred.frames[-1] >= step:
        raise PhaseFileError(f"{pred.path}: lacks frames: it ends at frame {pred.frames[-1]}, the ground "
                             f"truth at {gt.frames[-1]}")
    return gt.phases[where]


def rows_per_second(gt: PhaseFile, pred: PhaseFile) -> tuple[float, bool]:
    """(the prediction rows' frame rate, whether it was assumed). Cholec80's indices count
    25-fps frames, so rows every s frames are 25/s per second (its annotations, or exports
    numbered 0, 25, 50, ...). Consecutive indices with phase numbers are a 1-fps export numbered
    by second: 1 per second, assumed (`--fps` says otherwise)."""
    step = (pred.frames[-1] - pred.frames[0]) / (len(pred.frames) - 1) if len(pred.frames) > 1 else 1.0
    if gt.named or step > 1.5:
        return round(ANNOTATION_FPS / step, 6), False
    return 1.0, True


def write_phase_file(path: str | Path, frames: Sequence[int], phases: Sequence[int],
                     phase_names: Sequence[str]) -> None:
    """Cholec80's annotation format: `Frame<TAB>Phase`, then one `frame<TAB>name` row per frame."""
    rows = [HEADER, *(f"{int(f)}\t{phase_names[int(p)]}" for f, p in zip(frames, phases))]
    atomic_write(Path(path), "\n".join(rows) + "\n")


def phase_file_name(video_id: str) -> str:
    return f"{video_id}-phase.txt"


def paired_files(gt_dir: str | Path, pred_dir: str | Path) -> list[tuple[Path, Path]]:
    """(truth, prediction) per prediction file `<video>-phase.txt` in `pred_dir`."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for d, what in ((gt_dir, "--gt"), (pred_dir, "--pred")):
        if not d.is_dir():
            raise PhaseFileError(f"{what} {d}: not a directory")
    preds = sorted(p for p in pred_dir.iterdir() if FILE_PATTERN.match(p.name))
    if not preds:
        raise PhaseFileError(f"--pred {pred_dir}: no <video>-phase.txt files")
    missing = [p.name for p in preds if not (gt_dir / p.name).is_file()]
    if missing:
        raise PhaseFileError(f"--gt {gt_dir}: no ground truth for {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return [(gt_dir / p.name, p) for p in preds]

"""Fixture writers: tiny datasets on disk in the exact distributed formats, with the labels expected.

Frames are tiny solid-colour images whose colour is their phase's (`PALETTE`), so a test (or a
training smoke test) can tell from the pixels which label a frame should have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pitfalls.data.cholec80 import PHASES, TOOLS

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=np.uint8)


def write_image(path: Path, pixels: np.ndarray | Sequence[int], size: tuple[int, int] = (8, 6)) -> None:
    """An (H, W, 3) array, or a solid colour of `size` = (W, H), as JPEG/PNG by the path's suffix."""
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 1:
        pixels = np.broadcast_to(pixels, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, quality=95)


# ---------------------------------------------------------------- cholec80

def write_phase_file(path: Path, phases: Sequence[int | str]) -> None:
    """`videoNN-phase.txt`: header, then `frame<TAB>name` per 25-fps frame (ints are PHASES indices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [PHASES[p] if isinstance(p, (int, np.integer)) else p for p in phases]
    path.write_text("Frame\tPhase\n" + "".join(f"{f}\t{n}\n" for f, n in enumerate(names)))


def write_tool_file(path: Path, tools: np.ndarray, step: int = 25) -> None:
    """`videoNN-tool.txt`: header, then `frame<TAB>7 x 0/1` every `step` 25-fps frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{r * step}\t" + "\t".join(str(int(v)) for v in row) + "\n" for r, row in enumerate(tools))
    path.write_text("Frame\t" + "\t".join(TOOLS) + "\n" + rows)


def frame_path(root: Path, video: int, k: int, start: int = 1, ext: str = ".jpg", folder: str = "{:02d}") -> Path:
    """Where extracted frame k (0-based) of `video` lives: frames/NN/%08d.jpg numbered from `start`."""
    return root / "frames" / folder.format(video) / f"{k + start:08d}{ext}"


def write_cholec80(root: Path, seconds: dict[int, int], size: tuple[int, int] = (8, 6), fps: float = 1.0,
                   start: int = 1, seed: int = 0, ext: str = ".jpg", folder: str = "{:02d}",
                   images: bool = True) -> dict[int, dict]:
    """Cholec80 videos of about `seconds[id]` seconds; per id the labels each extracted frame must get.

    Phase files have one row per 25-fps frame (a random 0..24 short of whole seconds, so the
    frame count is a ceil), with phase changes at arbitrary 25-fps frames, i.e. between sampled
    frames; tool files have one row per 25 frames. The expected labels are read off the per-25-fps
    arrays directly (`phase25[round(25k/fps)]`, tool row `round(25k/fps) // 25`), not via the
    loader's searchsorted. `images=False` writes empty placeholder files (counting only).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for vid, secs in seconds.items():
        n25 = secs * 25 - int(rng.integers(0, 25))
        used = int(min(len(PHASES), max(2, secs // 3)))
        cuts = np.sort(rng.choice(np.arange(1, n25), size=used - 1, replace=False))
        phase25 = np.searchsorted(cuts, np.arange(n25), side="right")
        tool_rows = rng.integers(0, 2, size=(math.ceil(n25 / 25), len(TOOLS)), dtype=np.uint8)
        write_phase_file(root / "phase_annotations" / f"video{vid:02d}-phase.txt", phase25)
        write_tool_file(root / "tool_annotations" / f"video{vid:02d}-tool.txt", tool_rows)
        count = math.ceil(n25 * fps / 25 - 1e-9)
        f25 = np.array([math.floor(25 * k / fps + 0.5) for k in range(count)], dtype=np.int64)
        phases = phase25[f25]
        paths = [frame_path(root, vid, k, start, ext, folder) for k in range(count)]
        for p, phase in zip(paths, phases):
            if images:
                write_image(p, PALETTE[phase], size)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
        out[vid] = {"phases": phases.astype(np.int64), "tools": tool_rows[f25 // 25], "paths": paths,
                    "colours": PALETTE[phases], "phase25": phase25, "n25": n25}
    return out


# ---------------------------------------------------------------- generic frames layout

FRAME_PHASES = ("incision", "dissection", "closure")  # alphabetical order differs from use order
FRAME_TOOLS = ("tool_a", "tool_b")


def write_frames_dataset(root: Path, videos: dict[str, int], size: tuple[int, int] = (8, 6),
                         fmt: str = "csv", with_split: bool = True, seed: int = 0) -> dict:
    """`ROOT/<video>/img_NNNN.png` + `labels.csv|parquet` (rows shuffled); the expected videos.

    Frame numbers are 2, 5, 8, ... (not positions), each folder has one unlabelled extra image,
    phases are strings from FRAME_PHASES, tools FRAME_TOOLS; the first video is val, the second
    test (with three or more videos), the rest train.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    expected: dict[str, dict] = {}
    names = list(videos)
    for v, (name, count) in enumerate(videos.items()):
        split = "val" if v == 0 else "test" if v == 1 and len(names) >= 3 else "train"
        cut = int(rng.integers(1, count)) if count > 1 else 1
        phases = [FRAME_PHASES[0 if k < cut else 1 + (k >= count - 1 and count > 2)] for k in range(count)]
        tools = rng.integers(0, 2, size=(count, len(FRAME_TOOLS)), dtype=np.uint8)
        paths = []
        for k in range(count):
            n = 3 * k + 2
            p = root / name / f"img_{n:04d}.png"
            write_image(p, PALETTE[FRAME_PHASES.index(phases[k])], size)
            paths.append(p)
            rows.append({"video": name, "frame": n, "phase": phases[k],
                         **{t: int(tools[k, j]) for j, t in enumerate(FRAME_TOOLS)},
                         **({"split": split} if with_split else {})})
        write_image(root / name / "img_9999.png", PALETTE[-1], size)  # unlabelled: ignored
        expected[name] = {"phases": phases, "tools": tools, "paths": paths, "split": split}
    order = rng.permutation(len(rows))
    table = pa.Table.from_pylist([rows[i] for i in order])
    labels = root / f"labels.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, labels, pcsv.WriteOptions(quoting_style="none"))
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, labels)
    return {"labels": labels, "videos": expected, "phase_names": tuple(sorted(FRAME_PHASES)),
            "tool_names": FRAME_TOOLS}

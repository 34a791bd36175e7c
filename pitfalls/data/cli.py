"""`pitfalls data check | pack`: validate a dataset, and pack it into a frame store.

Both read every video of the dataset folder (not just one split), with the same loaders a
study uses, so a dataset that passes `check` loads in a study, and one that fails says every
problem (file and line) at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pitfalls.data.base import DataError, Video, summary
from pitfalls.fileio import atomic_write

DATASETS = ("cholec80", "frames")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    check = sub.add_parser("check", help="validate a dataset folder and summarize it")
    pack = sub.add_parser("pack", help="decode every frame once, resized, into a memory-mapped "
                                       "store with a Parquet index (resumable)")
    for p in (check, pack):
        p.add_argument("dataset", choices=DATASETS)
        p.add_argument("root", help="the dataset folder")
    pack.add_argument("out", help="the store folder to write (rerun to resume)")
    pack.add_argument("--size", required=True, type=_size, help="frame size WxH, e.g. 384x216")
    pack.add_argument("--workers", type=int, default=None, help="decoding workers (default: all cores)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    for p in (check, pack):
        g = p.add_argument_group("frames dataset")
        g.add_argument("--labels", default="labels.csv", help="labels file, relative to root")
        g.add_argument("--video-column", default="video")
        g.add_argument("--frame-column", default="frame")
        g.add_argument("--phase-column", default="phase")
        g.add_argument("--tool-columns", default="", help="comma-separated instrument columns")
        g.add_argument("--phases", default="", help="comma-separated class order")
        p.add_argument("--fps", type=float, default=1.0, help="frames per second of the frames")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH (e.g. 384x216)") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be >= 8")
    return w, h


def _split(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def read_all(args: argparse.Namespace, size: tuple[int, int] | None = None
             ) -> tuple[tuple[str, ...], tuple[str, ...], list[Video], dict | None]:
    """(phase names, tool names, every video, splits defined by the data or None)."""
    if args.dataset == "cholec80":
        from pitfalls.data import cholec80

        return cholec80.PHASES, cholec80.TOOLS, cholec80.read_videos(args.root, size=size, fps=args.fps), None
    from pitfalls.data import frames

    return frames.read_videos(args.root, labels=args.labels, video_column=args.video_column,
                              frame_column=args.frame_column, phase_column=args.phase_column,
                              tool_columns=_split(args.tool_columns), phases=_split(args.phases),
                              size=size)


def _text(report: dict) -> str:
    videos = report["videos"]
    if not videos:
        return "no videos"
    phases = list(videos[0]["phases"])
    tools = list(videos[0]["tools"])
    header = ["video", "frames", *phases, *(f"[{t}]" for t in tools)]
    rows = [[v["id"], v["frames"], *v["phases"].values(), *v["tools"].values()] for v in videos]
    rows.append(["total", sum(v["frames"] for v in videos),
                 *(sum(v["phases"][p] for v in videos) for p in phases),
                 *(sum(v["tools"][t] for v in videos) for t in tools)])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))
    return "\n".join([line(header), *map(line, rows),
                      "", "frames per phase; [tool] = frames with the instrument present"])


def check(args: argparse.Namespace) -> int:
    try:
        phases, tools, videos, _ = read_all(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = summary(videos, phases, tools)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.dataset} at {args.root}: {len(videos)} videos, "
              f"{sum(len(v) for v in videos)} frames: OK")
        print(_text(report))
    return 0


def pack(args: argparse.Namespace) -> int:
    from pitfalls.data.load import SPLITS_FILE
    from pitfalls.data.store import pack as pack_store
    from pitfalls.data.store import progress_bar

    try:
        phases, tools, videos, splits = read_all(args, size=args.size)
        total = sum(len(v) for v in videos)
        out = pack_store(videos, phases, tools, args.out, args.size, dataset=args.dataset,
                         source=str(Path(args.root).resolve()), fps=args.fps, workers=args.workers,
                         progress=progress_bar(total))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    if splits:
        atomic_write(Path(out) / SPLITS_FILE, json.dumps(splits, indent=1))
    print(f"packed {len(videos)} videos, {total} frames at {args.size[0]}x{args.size[1]} into {out}")
    print(f"use it in a study: dataset: {{name: {args.dataset}, options: {{store: {out}, "
          f"frame_size: [{args.size[0]}, {args.size[1]}], ...}}}}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"check": check, "pack": pack}[args.data_command](args)

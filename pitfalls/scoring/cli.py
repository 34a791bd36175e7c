"""`pitfalls evaluate --gt DIR --pred DIR`: score prediction files, whoever produced them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from pitfalls.markdown import table
from pitfalls.scoring.phase_files import (
    PhaseFile,
    PhaseFileError,
    match,
    paired_files,
    read_phase_file,
    rows_per_second,
)
from pitfalls.scoring.protocols import PER_PHASE, PROTOCOLS, SCORES, Evaluation, evaluate_videos


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True, help="ground-truth folder of <video>-phase.txt files "
                                               "(Cholec80's phase_annotations, or 1-fps exports)")
    p.add_argument("--pred", required=True, help="prediction folder of <video>-phase.txt files "
                                                 "(e.g. a trial's predictions/<trial>/test)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="matlab",
                   help="matlab: the M2CAI16/Cholec80 scripts exactly, quirks included (default); "
                        "corrected: their bugs fixed (docs/evaluation.md)")
    p.add_argument("--fps", type=float, default=None,
                   help="rows per second of the predictions, for the 10 s relaxed boundary "
                        "(default: from the frame indices, which count Cholec80's 25-fps frames)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON (percent)")


def _first_row_dropped(f: PhaseFile) -> PhaseFile:
    """ReadPhaseLabel.m reads the first line as the header whether or not it is one. Applied
    where the ground truth has no header (the 1-fps exports the scripts are run on); against
    Cholec80's own annotations (with a header) predictions are matched by frame instead, which
    the scripts cannot do at all."""
    if f.header or len(f.frames) < 2:
        return f
    return replace(f, frames=f.frames[1:], phases=f.phases[1:], lines=f.lines[1:])


def evaluate_dirs(gt_dir: str, pred_dir: str, protocol: str, fps: float | None,
                  phase_names: Sequence[str]) -> tuple[Evaluation, float, list[str]]:
    """(the scores, the fps used, notes); PhaseFileError names the file (and line) at fault."""
    pairs, rates, notes = [], set(), []
    for gt_path, pred_path in paired_files(gt_dir, pred_dir):
        gt, pred = read_phase_file(gt_path, phase_names), read_phase_file(pred_path, phase_names)
        if protocol == "matlab" and not gt.header:  # the scripts' own pairs: both read alike
            if not notes:
                notes.append("matlab: the first row of a file without a header is skipped, as "
                             "ReadPhaseLabel.m does (--protocol corrected keeps it)")
            gt, pred = _first_row_dropped(gt), _first_row_dropped(pred)
        pairs.append((match(gt, pred), pred.phases))
        if fps is None:
            rate, assumed = rows_per_second(gt, pred)
            if assumed and not any("assumed" in n for n in notes):
                notes.append(f"{pred_path.name}: consecutive frame numbers with phase numbers: "
                             "assumed 1 row per second (a 1-fps export); pass --fps otherwise")
            rates.add(rate)
    if fps is None:
        if len(rates) > 1:
            raise PhaseFileError(f"--pred {pred_dir}: files at different frame rates "
                                 f"({', '.join(f'{r:g}' for r in sorted(rates))} rows/s); pass --fps")
        fps = rates.pop()
    return evaluate_videos(pairs, len(phase_names), fps, protocol), fps, notes


def _fmt(x: float) -> str:
    return "nan" if np.isnan(x) else f"{x:.2f}"


def render(ev: Evaluation, fps: float, phase_names: Sequence[str]) -> str:
    """The per-phase table of each kind, then the summary lines (Main.m's layout, percent)."""
    out = [f"{ev.videos} videos, protocol {ev.protocol}, {fps:g} rows/s (relaxed boundary "
           f"{int(np.floor(10 * fps + 1e-9))} rows)", ""]
    for kind, s in ev.kinds.items():
        out += [f"## {kind}", "", table(["phase", *PER_PHASE], [
            [name, *(_fmt(s.per_phase[k][i]) for k in PER_PHASE)]
            for i, name in enumerate(phase_names)])]
        for k in SCORES:
            mean, std = s.summary[k]
            out.append(f"{kind} {k}: {_fmt(mean)} ± {_fmt(std)}")
        out.append("")
    pooled = ", ".join(f"{k} {v:.4f}" for k, v in ev.pooled.items())
    return "\n".join([*out, f"pooled (fractions): {pooled}"])


def run(args: argparse.Namespace, phase_names: Sequence[str]) -> int:
    if args.fps is not None and not args.fps > 0:
        print(f"error: --fps must be > 0, got {args.fps:g}", file=sys.stderr)
        return 2
    try:
        ev, fps, notes = evaluate_dirs(args.gt, args.pred, args.protocol, args.fps, phase_names)
    except PhaseFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"fps": fps, **ev.as_json(phase_names)}, indent=2))
    else:
        print(render(ev, fps, phase_names))
    return 0

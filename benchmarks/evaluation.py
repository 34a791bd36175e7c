"""Evaluation frames/s: several videos as lanes in long chunks vs one video at a time.

    uv run python benchmarks/evaluation.py            # ~1 min on 2 CPU cores
    uv run python benchmarks/evaluation.py --quick    # smoke run, seconds
    python3 benchmarks/evaluation.py --device cuda --backbone resnet50 --size 384x216 --videos 32

Needs torch, timm and numpy (no Ray, Optuna or MLflow). Videos are random uint8 frames in
memory; the model is `build_model` (random init, GroupNorm, LSTM 512). Both settings run
`pitfalls.train.evaluation.evaluate`, the code trials run: `lanes=1, chunk=64` is the
evaluation before lanes (one video at a time, 64-frame chunks), the other the study defaults
(`performance.eval_videos`, `performance.eval_chunk`). Rounds alternate; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitfalls.config import PerformanceSpec
from pitfalls.data.base import Video
from pitfalls.models.heads import LSTMHead
from pitfalls.models.video_model import build_model
from pitfalls.train.evaluation import evaluate
from pitfalls.train.fast import EVAL_AUTO, prepare_model, resolve
from pitfalls.train.tasks import PhaseTask

ONE_AT_A_TIME = {"lanes": 1, "chunk": 64}  # the evaluation before lanes (a CPU's `auto`)
LANES = dict(zip(("lanes", "chunk"), EVAL_AUTO[True]))  # a GPU's `auto`


def random_videos(n: int, frames: int, size: tuple[int, int], seed: int = 0) -> list[Video]:
    """`n` videos of about `frames` frames (lengths vary by up to ±30%, as surgeries do)."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for i in range(n):
        t = int(frames * rng.uniform(0.7, 1.3))
        out.append(Video(f"v{i}", rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
                         rng.integers(0, 7, t).astype(np.int64), np.zeros((t, 0), np.uint8)))
    return out


def eval_fps(model, videos: list[Video], device: torch.device, fast, lanes: int, chunk: int) -> float:
    """Frames/s of one `evaluate` over `videos`."""
    task = PhaseTask(7)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    _, _, frames = evaluate(model, videos, task, device, fast, lanes=lanes, chunk=chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - t0)


def compare(backbone: str, size: tuple[int, int], videos: int, frames: int, device: torch.device,
            rounds: int = 3) -> dict[str, float]:
    """Median frames/s of the one-at-a-time and the lane evaluation, alternating rounds."""
    fast = resolve(PerformanceSpec(), device)
    torch.manual_seed(0)
    model = prepare_model(build_model(backbone=backbone, norm="group", frozen_stages=0,
                                      num_classes=7, head_options=LSTMHead(hidden_size=512),
                                      load_weights=False).to(device), fast)
    data = random_videos(videos, frames, size)
    settings = {"one video at a time": ONE_AT_A_TIME,
                f"{LANES['lanes']} lanes x {LANES['chunk']}": LANES}
    for s in settings.values():  # warm-up: cuDNN autotuning, allocator
        eval_fps(model, data[:2], device, fast, **s)
    fps: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(rounds):
        for name, s in settings.items():
            fps[name].append(eval_fps(model, data, device, fast, **s))
    return {k: statistics.median(v) for k, v in fps.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", default="192x108", help="WxH")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150, help="mean frames per video")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.backbone, args.size, args.videos, args.frames, args.rounds = "resnet18", "64x36", 3, 40, 1
    w, h = (int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    result = compare(args.backbone, (w, h), args.videos, args.frames, device, args.rounds)
    base = result["one video at a time"]
    print(f"{args.backbone}-GN + LSTM 512, {args.videos} videos of ~{args.frames} frames of "
          f"{w}x{h}, {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for name, fps in result.items():
        print(f"  {name:<22} {fps:8.1f} frames/s  {fps / base:.2f}x")


if __name__ == "__main__":
    main()

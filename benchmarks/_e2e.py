"""Shared parts of the end-to-end step benchmarks (e2e_vs_timm.py, e2e_vs_reference.py).

Needs torch, timm and numpy only (no Ray, Optuna or MLflow): runs on a bare GPU box. Frames are
random uint8 arrays held in (pinned) host memory, so decoding is out of the picture: what is
timed is host->device transfer, conversion, forward, backward and the optimizer step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitfalls.config import PerformanceSpec
from pitfalls.models.heads import LSTMHead
from pitfalls.models.inputs import frames_to_input
from pitfalls.models.video_model import build_model
from pitfalls.train.fast import Stepper, prepare_model, resolve
from pitfalls.train.tasks import PhaseTask

NUM_CLASSES = 7  # Cholec80's phases
# The paper's setting (GPU): ResNet-50 with GroupNorm, 384x216 frames, sequences of 64, LSTM 512.
GPU_DEFAULTS = {"backbone": "resnet50", "seq_len": 64, "videos": 1, "size": "384x216", "steps": 20}
# A 2-core CPU cannot time that in minutes: same code, smaller shapes.
CPU_DEFAULTS = {"backbone": "resnet18", "seq_len": 8, "videos": 2, "size": "192x108", "steps": 4}


@dataclass
class Timing:
    name: str
    seconds: list[float]  # per round
    frames: int  # frames trained per round
    peak_mib: float = float("nan")

    @property
    def fps(self) -> float:
        return self.frames / statistics.median(self.seconds)


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", help="timm model (GPU default resnet50, CPU default resnet18)")
    ap.add_argument("--norm", default="group", help="the backbone's norm (default group: ResNet-50-GN)")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--videos", type=int, help="sequences per step")
    ap.add_argument("--size", help="WxH (GPU default 384x216)")
    ap.add_argument("--hidden", type=int, default=512, help="LSTM units")
    ap.add_argument("--frozen-stages", type=int, default=0, help="stem + first k backbone stages frozen")
    ap.add_argument("--steps", type=int, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, compile)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median counts")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbones")
    ap.add_argument("--pretrained", action="store_true",
                    help="as a model.pretrained trial builds it (input normalization; random weights)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, 1 round")
    return ap


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults for the device; --quick shrinks everything."""
    defaults = GPU_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    if args.quick:
        defaults = {"backbone": "resnet18", "seq_len": 4, "videos": 2, "size": "64x48", "steps": 2}
        args.rounds, args.warmup = 1, 1
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    return args


def settings(*argv: str) -> argparse.Namespace:
    """The settled arguments of a command line (`settings("--norm", "batch")`): how other
    scripts (benchmarks/gpu_suite.py) run these benchmarks without a shell."""
    return settle(parser("").parse_args(list(argv)))


def header(args: argparse.Namespace) -> str:
    import timm

    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor()
                                                                     or platform.machine())
    threads = torch.get_num_threads()
    return (f"device: {dev.type} {name} ({threads} CPU threads) | torch {torch.__version__}, "
            f"timm {timm.__version__}, {time.strftime('%Y-%m-%d')}\n"
            f"step: {args.backbone}-{args.norm} + LSTM {args.hidden}, {args.videos} x "
            f"{args.seq_len} frames of {args.width}x{args.height}, {args.steps} steps x "
            f"{args.rounds} rounds after {args.warmup} warm-up steps")


def host_frames(args: argparse.Namespace, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (B, T, H, W, 3) as the loader delivers them, and phase labels (B, T)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (args.videos, args.seq_len, args.height, args.width, 3),
                          dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, (args.videos, args.seq_len)))
    return torch.from_numpy(frames), labels


def paper_model(args: argparse.Namespace):
    """The backbone + causal LSTM of `args` (the papers' CNN-LSTM), randomly initialized; with
    `--pretrained`, a pretrained trial's model (its input normalization and kept norms) with
    random weights: the step costs the same."""
    return build_model(backbone=args.backbone, norm=args.norm, frozen_stages=args.frozen_stages,
                       num_classes=NUM_CLASSES, head_options=LSTMHead(hidden_size=args.hidden),
                       pretrained=args.pretrained, load_weights=False)


def platform_stepper(args: argparse.Namespace) -> Stepper:
    """The platform's `Stepper` for `args`, as a trial builds it (resolved fast path)."""
    device = torch.device(args.device)
    fast = resolve(PerformanceSpec(precision=args.precision, compile=args.compile), device)
    torch.manual_seed(0)
    model = paper_model(args).to(device)
    model = prepare_model(model, fast)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return Stepper(model, optimizer, PhaseTask(NUM_CLASSES).loss, fast)


def platform_step(args: argparse.Namespace) -> Callable[[], None]:
    """The platform's training step exactly as a trial runs it (`Stepper`, resolved fast path):
    frames in a pinned host buffer (as the prefetch thread fills it), copied without blocking."""
    device = torch.device(args.device)
    stepper = platform_stepper(args)
    fast = stepper.fast
    frames, labels = host_frames(args)
    if device.type == "cuda":
        frames = frames.pin_memory()
    labels = labels.to(device)

    def step():
        torch.backends.cudnn.benchmark = fast.cudnn_benchmark  # a global flag: set per step
        stepper.step(frames_to_input(frames, device), (labels,), None)

    step.fast = fast  # type: ignore[attr-defined]
    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(steps: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, Timing]:
    """Warm each step up, then time `args.steps` of each in alternating rounds."""
    return alternate(steps, args.videos * args.seq_len * args.steps, device=args.device,
                     warmup=args.warmup, rounds=args.rounds, repeats=args.steps)


def alternate(calls: dict[str, Callable[[], None]], frames: int, *, device: str, warmup: int,
              rounds: int, repeats: int = 1) -> dict[str, Timing]:
    """Warm each call up (its peak GPU memory is taken there), then time `repeats` calls of each
    in alternating rounds (drift hits all alike); `frames`: frames processed per round."""
    timings = {name: Timing(name, [], frames) for name in calls}
    cuda = device.startswith("cuda")
    for name, call in calls.items():
        if cuda:  # this call's own peak: above what the other calls' models already hold
            sync(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        for _ in range(warmup):
            call()
        sync(device)
        if cuda:
            timings[name].peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    for _ in range(rounds):
        for name, call in calls.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                call()
            sync(device)
            timings[name].seconds.append(time.perf_counter() - t0)
    return timings


def table(timings: dict[str, Timing]) -> str:
    rows = ["| step | frames/s (median) | rounds (s) | peak GPU memory above baseline (MiB) |",
            "|---|---|---|---|"]
    for t in timings.values():
        rounds = ", ".join(f"{s:.2f}" for s in t.seconds)
        rows.append(f"| {t.name} | {t.fps:.1f} | {rounds} | {t.peak_mib:.0f} |")
    return "\n".join(rows)

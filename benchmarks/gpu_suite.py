"""Every GPU figure the docs lack, measured in one prepared run (one call of a lent GPU).

    python3 benchmarks/gpu_suite.py OUT_DIR                 # a CUDA machine: ~8 min budget
    uv run python benchmarks/gpu_suite.py OUT_DIR --smoke   # tiny shapes, CPU allowed (CI)
    python3 benchmarks/gpu_suite.py OUT_DIR --only loader,evaluation   # a rerun of some sections

Writes OUT_DIR/gpu_suite.json (the machine, then each section's figures) and OUT_DIR/gpu_suite.md
(the same as Markdown tables for docs/benchmarks.md), both rewritten after every section, so a
run stopped early keeps what it measured. Each section is guarded: one that fails records its
error and the rest still run; sections the time budget no longer covers are recorded as skipped.
Sections (the letters of the issue), in the order they run, most wanted first:

  (b) e2e_*        the platform's step vs timm's and the papers' loop (benchmarks/e2e_vs_timm.py,
                   e2e_vs_reference.py) at the paper setting, bf16 + channels-last, BN and GN,
                   eager here and compiled last (each compile in a child process of its own)
  (h) profile      torch.profiler's top ops of one platform step at the paper setting
  (d) loader       JPEG and packed-store frames/s (benchmarks/loader.py, in a child process: it
                   forks readers, never from a process holding CUDA) vs the steps of (b)
  (f) plan_memory  `pitfalls plan`'s memory estimates (plan_study) vs measured peaks
  (c) two_stage    feature extraction of a two-stage trial (pitfalls.train.two_stage.extract)
  (g) evaluation   pitfalls.train.evaluation.evaluate: one video at a time vs its defaults
      host_pipeline  training steps fed from memory-mapped videos with and without the prefetch
                   thread (benchmarks/host_pipeline.py), and the host's build time alone
  (e) whitening    the whitening norms' step time and memory vs BN (benchmarks/whitening.py)
  (a) cuda_tests   `python -m pytest tests/gpu` in a child process, its counts

Timings are medians of alternating rounds, synchronized with `torch.cuda.synchronize()`. Needs
torch, timm, numpy, pyarrow and Pillow; pytest and pydantic only for (a). `--smoke` shrinks
everything (timm's test_resnet, the e2e benchmarks' --quick frames, 1-2 steps, one torch thread,
no compile) so CI runs it in seconds on a CPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (BENCH, ROOT):  # the benchmark modules, and the package they import
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pitfalls.fileio import atomic_write  # noqa: E402 - after the path
from pitfalls.markdown import table  # noqa: E402

GPU_BUDGET_S = 480.0  # a call of the device tool runs 10 min at most: the install, and the
# section still running when the budget ends, get the rest
SMOKE_BUDGET_S = 300.0  # a guard only: the smoke run takes seconds
SMOKE_ARGS = ("--quick", "--backbone", "test_resnet", "--hidden", "16")  # timm's tiniest ResNet
PRECISION = "bf16"  # with channels-last: what `performance: auto` resolves to on an H100
E2E_NORMS = ("batch", "group")  # BN (ResNet-50) and GN (ResNet-50-GN), the papers' two
FROZEN_STAGES = 2  # the plan check's frozen configuration (the freeze study's middle depth)
PLAN_TOLERANCE = 0.25  # the planner's stated accuracy (README "Plan before you launch")
WHITENING_SIZE = 224  # whitening.py takes square inputs: ResNet-50's ImageNet training size
PROFILED_STEPS = 2
TOP_OPS = 15
CUDA_TESTS_MAX_S = 300.0
JSON_NAME, MD_NAME = "gpu_suite.json", "gpu_suite.md"


class Skip(Exception):
    """Raised by a section that cannot measure here; its message is the reason."""


@dataclass
class Context:
    """What every section sees: the settings of this run and the records so far."""

    out: Path
    smoke: bool
    device: str  # "cuda" or "cpu"
    deadline: float  # time.monotonic() when the budget ends
    results: dict[str, dict] = field(default_factory=dict)

    @property
    def left_s(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[Context], dict]  # -> figures: {"tables": {key: {"caption", "rows"}}, ...}
    min_s: float  # seconds it needs at least on a GPU: skipped when less of the budget is left
    cuda_only: bool = False
    isolate: bool = False  # in a child process (global state: compile caches, forked readers)
    finish: Callable[[dict, Context], dict] | None = None  # adds what needs later sections too


# ------------------------------------------------------------------------------ shared parts


def _e2e_args(ctx: Context, *argv: str):
    """The e2e benchmarks' settled arguments: the paper setting on a GPU (their GPU defaults),
    their --quick shapes with --smoke; `argv` overrides."""
    from _e2e import settings

    smoke = SMOKE_ARGS if ctx.smoke else ()
    return settings("--device", ctx.device, "--precision", PRECISION, *smoke, *argv)


def _setting(args) -> str:
    frozen = f", {args.frozen_stages} stages frozen" if args.frozen_stages else ""
    return (f"{args.backbone}-{args.norm} + LSTM {args.hidden}, {args.videos} x {args.seq_len} "
            f"frames of {args.width}x{args.height}{frozen}, {args.precision}"
            f"{', torch.compile' if args.compile else ''}; {args.steps} steps x {args.rounds} "
            f"rounds after {args.warmup} warm-up steps")


def _timing_rows(timings: dict, labels: dict[str, str] | None = None) -> list[dict]:
    return [{"what": (labels or {}).get(name, name), "frames/s": t.fps, "rounds (s)": t.seconds,
             "peak GPU MiB": t.peak_mib} for name, t in timings.items()]


def _fast_path(args):
    import torch

    from pitfalls.config import PerformanceSpec
    from pitfalls.train.fast import resolve

    return resolve(PerformanceSpec(precision=args.precision), torch.device(args.device))


@functools.cache
def _videos(count: int, frames: int, height: int, width: int) -> tuple:
    """Videos of random uint8 frames (content does not change the cost), of unequal lengths
    from `frames` up (lanes of videos then end at different times), phases in order."""
    import numpy as np
    from _e2e import NUM_CLASSES

    from pitfalls.data.base import Video
    from pitfalls.data.cholec80 import TOOLS

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        n = frames + i * frames // count
        pixels = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
        phases = np.sort(rng.integers(0, NUM_CLASSES, n)).astype(np.int64)
        out.append(Video(f"video{i:02d}", pixels, phases, np.zeros((n, len(TOOLS)), np.uint8)))
    return tuple(out)


def _suite_videos(ctx: Context, args) -> tuple:
    """The videos of (c) and (g): more than evaluation's lanes, each several of its chunks long
    (12 of 6-11.5 training sequences; with --smoke 3 of 3-5)."""
    if ctx.smoke:
        return _videos(3, 3 * args.seq_len, args.height, args.width)
    return _videos(12, 6 * args.seq_len, args.height, args.width)


def _alternate(calls: dict, frames: int, args) -> dict:
    from _e2e import alternate

    return alternate(calls, frames, device=args.device, warmup=1, rounds=args.rounds)


def _fresh() -> None:
    """Free what a section left (models, cached blocks) and reset the global flag sections set,
    so the next one starts as in a fresh process."""
    import gc

    import torch

    gc.collect()
    torch.backends.cudnn.benchmark = False
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ (b) e2e


E2E_LABELS = {"platform": "platform (Stepper, fast path, host frames)",
              "timm": "timm (CNN alone, input on device)",
              "reference": "reference (papers' loop: fp32, NCHW, sync per step)"}


def e2e(ctx: Context, norm: str, compiled: bool) -> dict:
    """The platform's step, timm's and the papers' loop in one set of alternating rounds."""
    if compiled and ctx.smoke:
        raise Skip("torch.compile is left out of --smoke (a compile takes minutes)")
    from _e2e import measure, platform_step
    from e2e_vs_reference import TARGET as REFERENCE_TARGET
    from e2e_vs_reference import reference_step
    from e2e_vs_timm import TARGET as TIMM_TARGET
    from e2e_vs_timm import timm_step

    args = _e2e_args(ctx, "--norm", norm, *(("--compile",) if compiled else ()))
    ours = platform_step(args)
    timings = measure({"platform": ours, "timm": timm_step(args, ours.fast),
                       "reference": reference_step(args)}, args)
    fps = {name: t.fps for name, t in timings.items()}
    ratios = [("platform / timm", fps["platform"] / fps["timm"], TIMM_TARGET),
              ("platform / reference", fps["platform"] / fps["reference"], REFERENCE_TARGET)]
    return {"setting": _setting(args), "fast_path": ours.fast.as_params(), "frames_per_s": fps,
            "ratios": {name: r for name, r, _ in ratios},
            "tables": {"steps": {"caption": _setting(args), "rows": _timing_rows(timings, E2E_LABELS)},
                       "ratios": {"caption": "", "rows": [
                           {"ratio": name, "×": r, "target": f"≥ {t}×", "meets": r >= t}
                           for name, r, t in ratios]}}}


# ------------------------------------------------------------------------------ (h) profile


def _self_time(event, cuda: bool) -> float:
    """Microseconds of the op itself (its kernels on a GPU), children excluded."""
    if not cuda:
        return event.self_cpu_time_total
    if hasattr(event, "self_device_time_total"):  # torch >= 2.4; self_cuda_time_total before
        return event.self_device_time_total
    return event.self_cuda_time_total


def _top_ops(averages, cuda: bool, steps: int) -> tuple[list[dict], float]:
    """The ops (as the CPU launched them) by their own device time, and the total of all
    kernels (ms per step); on a CPU by self CPU time. Kernels stand in for the ops where none
    of the ops has kernels of its own."""
    from torch.autograd import DeviceType

    ops = [e for e in averages if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]
    kernels = [e for e in averages if getattr(e, "device_type", DeviceType.CPU) != DeviceType.CPU]
    total = sum(_self_time(e, cuda) for e in (kernels if cuda and kernels else ops)) or 1.0
    if cuda and not any(_self_time(e, cuda) for e in ops):
        ops = kernels
    unit = "CUDA" if cuda else "CPU"
    rows = [{"op": e.key[:90], "calls/step": e.count / steps,
             f"self {unit} ms/step": _self_time(e, cuda) / 1e3 / steps,
             f"% of {unit} time": 100 * _self_time(e, cuda) / total,
             "CPU ms/step (with children)": e.cpu_time_total / 1e3 / steps}
            for e in sorted(ops, key=lambda e: _self_time(e, cuda), reverse=True)[:TOP_OPS]]
    return rows, total / 1e3 / steps


def profile_step(ctx: Context) -> dict:
    """torch.profiler over platform steps at the paper setting, after the warm-up steps."""
    from _e2e import platform_step, sync
    from torch.profiler import ProfilerActivity, profile

    args = _e2e_args(ctx)
    step = platform_step(args)
    for _ in range(args.warmup):
        step()
    sync(args.device)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(PROFILED_STEPS):
            step()
        sync(args.device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / PROFILED_STEPS
    rows, busy_ms = _top_ops(prof.key_averages(), cuda, PROFILED_STEPS)
    unit = "kernel" if cuda else "CPU op"
    return {"setting": _setting(args), "step_ms_profiled": wall_ms, f"{unit}_ms_per_step": busy_ms,
            "tables": {"ops": {"caption": f"{_setting(args)}; top {TOP_OPS} ops of "
                                          f"{PROFILED_STEPS} profiled steps", "rows": rows}},
            "notes": [f"a profiled step took {wall_ms:.1f} ms of wall time; its {unit}s "
                      f"{busy_ms:.1f} ms ({100 * busy_ms / wall_ms:.0f}%)"]}


# ------------------------------------------------------------------------------ (d) loader


def loader_section(ctx: Context) -> dict:
    """benchmarks/loader.py's JPEG and packed-store figures at the paper's frames and batch."""
    import loader as bench

    args = _e2e_args(ctx)
    argv = ["--quick"] if ctx.smoke else ["--size", f"{args.width}x{args.height}", "--seq-len",
                                          str(args.seq_len), "--videos-per-batch", str(args.videos)]
    largs = bench.settle_defaults(bench.parse_args(argv), ctx.device == "cuda")
    cores = 1 if ctx.smoke else len(os.sched_getaffinity(0))
    f = bench.loader_figures(largs, cores)
    rows = [{"source": "JPEG decode+resize", "frames/s per core": f["jpeg_core"],
             "frames/s total": f["jpeg_total"]},
            {"source": "packed store read", "frames/s per core": f["store_core"],
             "frames/s total": f["store_total"]}]
    w, h = largs.size
    caption = (f"{largs.videos} videos x {largs.frames} JPEG frames (mean {f['jpeg_kib']:.0f} KiB) "
               f"decoded to {w}x{h}, batches of {largs.videos_per_batch} x {largs.seq_len}, "
               f"{cores} cores")
    return {"figures": f, "cores": cores, "tables": {"loader": {"caption": caption, "rows": rows}},
            "notes": [f"pack: threads {f['pack_thread']:.0f} frames/s, processes "
                      f"{f['pack_process']:.0f} frames/s (identical stores: "
                      f"{f['identical_stores']})"]}


def loader_vs_steps(record: dict, ctx: Context) -> dict:
    """The loader's totals over what each measured platform step of (b) consumes."""
    from loader import TARGET

    f = record["figures"]
    rows = [{"GPU step": SECTION_TITLES[name], "consumes frames/s": r["frames_per_s"]["platform"],
             "JPEG total / step (×)": f["jpeg_total"] / r["frames_per_s"]["platform"],
             "store total / step (×)": f["store_total"] / r["frames_per_s"]["platform"],
             "target": f"≥ {TARGET}×"}
            for name, r in ctx.results.items() if name.startswith("e2e") and r["status"] == "ok"]
    caption = "the loader's totals over the platform steps of (b)" if rows else (
        "no platform step of (b) was measured in this run: nothing to compare with")
    return {**record, "tables": {**record["tables"], "vs_steps": {"caption": caption, "rows": rows}}}


# ------------------------------------------------------------------------------ (f) plan


def _plan_levels(args) -> tuple[dict, ...]:
    """Three configurations around the paper's batch: BN 1 x T, GN 2 x T/2, GN frozen 1 x 2T."""
    v, t = args.videos, args.seq_len
    return ({"norm": "batch", "frozen_stages": 0, "videos_per_batch": v, "seq_len": t},
            {"norm": "group", "frozen_stages": 0, "videos_per_batch": 2 * v, "seq_len": t // 2},
            {"norm": "group", "frozen_stages": FROZEN_STAGES, "videos_per_batch": v, "seq_len": 2 * t})


def _plan_spec(args, levels: tuple[dict, ...]):
    """A study of these configurations (one linked factor) at the e2e frames, built from the
    config dataclasses directly: no study file, no pydantic."""
    from pitfalls.config import (
        BudgetSpec,
        MetricSpec,
        ModelSpec,
        PerformanceSpec,
        ResourceSpec,
        SearcherSpec,
        SearchSpace,
        StudySpec,
        TaskSpec,
    )
    from pitfalls.data.cholec80 import Cholec80Options
    from pitfalls.data.load import DatasetSpec
    from pitfalls.models.heads import LSTMHead

    return StudySpec(
        name="gpu_suite", dataset=DatasetSpec("cholec80", Cholec80Options(frame_size=(args.width, args.height))),
        task=TaskSpec(), model=ModelSpec(backbone=args.backbone,
                                         temporal_head=(LSTMHead(hidden_size=args.hidden),)),
        budget=BudgetSpec(), resources=ResourceSpec(gpus_per_worker=float(args.device.startswith("cuda"))),
        searcher=SearcherSpec(), seeds=(0,), metric=MetricSpec(),
        search_space=SearchSpace("gpu_suite", (("configuration", levels),), ()),
        performance=PerformanceSpec(precision=args.precision))


def measured_peak(args) -> float:
    """Peak bytes of a real training step (the benchmarks' platform step: Stepper, AdamW, the
    fast path), weights and optimizer state included: on CUDA max_memory_allocated over the
    second step (the first autotunes and makes the optimizer state) above the level before the
    model was built; on a CPU the planner's allocation count over building and two steps."""
    import torch
    from _e2e import platform_step, sync

    from pitfalls.plan import peak_memory

    if not args.device.startswith("cuda"):
        def build_and_train() -> None:
            step = platform_step(args)
            step()
            step()

        return peak_memory(build_and_train, torch.device("cpu"))
    sync(args.device)
    base = torch.cuda.memory_allocated()
    step = platform_step(args)
    step()
    sync(args.device)
    torch.cuda.reset_peak_memory_stats()
    step()
    sync(args.device)
    return float(torch.cuda.max_memory_allocated() - base)


def plan_memory(ctx: Context) -> dict:
    """plan_study's peak estimates (what `pitfalls plan` prints) vs measured step peaks."""
    import torch

    from pitfalls.plan import plan_study

    args = _e2e_args(ctx)
    levels = _plan_levels(args)[:1 if ctx.smoke else None]  # a CPU plans slowly (profiled peaks)
    plan = plan_study(_plan_spec(args, levels), torch.device(args.device))
    rows = []
    for c in plan.configs:
        p = c.params
        _fresh()  # the level before the model is built: nothing of the planner's left
        measured = measured_peak(_e2e_args(ctx, "--norm", p["norm"], "--frozen-stages",
                                           str(p["frozen_stages"]), "--videos",
                                           str(p["videos_per_batch"]), "--seq-len", str(p["seq_len"])))
        planned = getattr(c, "train_peak_bytes", c.peak_bytes)  # training's, not evaluation's
        rows.append({"norm": p["norm"], "frozen_stages": p["frozen_stages"],
                     "videos x seq_len": f"{p['videos_per_batch']} x {p['seq_len']}",
                     "planned MiB": planned / 2**20, "measured MiB": measured / 2**20,
                     "planned / measured": planned / measured,
                     f"within {PLAN_TOLERANCE:.0%}": abs(planned / measured - 1) <= PLAN_TOLERANCE,
                     "planned eval MiB": getattr(c, "eval_peak_bytes", math.nan) / 2**20})
    caption = (f"{args.backbone} + LSTM {args.hidden}, {args.width}x{args.height}, {plan.fast.precision}, "
               f"channels_last={plan.fast.channels_last}; planned in {plan.measure_s:.1f} s")
    return {"budget_bytes": plan.budget_bytes, "tables": {"memory": {"caption": caption, "rows": rows}}}


# ------------------------------------------------------------------------------ (c) two-stage


def _extract_all(model, videos: tuple, device, fast) -> None:
    from pitfalls.train.two_stage import extract

    for video in videos:
        extract(model, video, device, fast)


def two_stage(ctx: Context) -> dict:
    """A two-stage trial's feature extraction (its stage-1 CNN in eval mode over every frame)."""
    import torch
    from _e2e import NUM_CLASSES

    from pitfalls.models.video_model import build_model
    from pitfalls.train.fast import prepare_model

    args = _e2e_args(ctx)
    device, fast = torch.device(args.device), _fast_path(args)
    videos = _suite_videos(ctx, args)
    calls = {}
    for norm in E2E_NORMS:
        torch.manual_seed(0)
        cnn = build_model(backbone=args.backbone, norm=norm, frozen_stages=0,
                          num_classes=NUM_CLASSES, temporal_head=None)
        model = prepare_model(cnn.to(device), fast).eval()
        calls[f"{args.backbone}-{norm}"] = functools.partial(_extract_all, model, videos, device, fast)
    frames = sum(len(v) for v in videos)
    timings = _alternate(calls, frames, args)
    caption = (f"{len(videos)} videos, {frames} frames of {args.width}x{args.height}, "
               f"{fast.precision}, channels_last={fast.channels_last}; {args.rounds} rounds")
    return {"frames_per_s": {k: t.fps for k, t in timings.items()},
            "tables": {"extraction": {"caption": caption, "rows": _timing_rows(timings)}}}


# ------------------------------------------------------------------------------ (g) evaluation


def evaluation(ctx: Context) -> dict:
    """evaluate() one video at a time (lanes=1, chunk=64: the evaluation before lanes) vs the
    lanes a GPU's `auto` runs (performance.eval_videos, eval_chunk), on one model."""
    import torch
    from _e2e import NUM_CLASSES, paper_model
    from evaluation import LANES, ONE_AT_A_TIME

    from pitfalls.train.evaluation import evaluate
    from pitfalls.train.fast import prepare_model
    from pitfalls.train.tasks import PhaseTask

    args = _e2e_args(ctx)
    device, fast = torch.device(args.device), _fast_path(args)
    torch.manual_seed(0)
    model = prepare_model(paper_model(args).to(device), fast)
    videos = list(_suite_videos(ctx, args))
    run = functools.partial(evaluate, model, videos, PhaseTask(NUM_CLASSES), device, fast)
    calls = {"lanes=1, chunk=64 (one video at a time; a CPU's auto)": functools.partial(run, **ONE_AT_A_TIME),
             f"lanes={LANES['lanes']}, chunk={LANES['chunk']} (a GPU's auto)": functools.partial(run, **LANES)}
    frames = sum(len(v) for v in videos)
    timings = _alternate(calls, frames, args)
    fps = [t.fps for t in timings.values()]
    caption = (f"{args.backbone}-{args.norm} + LSTM {args.hidden}, {len(videos)} videos, {frames} "
               f"frames of {args.width}x{args.height}, {fast.precision}; {args.rounds} rounds")
    return {"frames_per_s": {k: t.fps for k, t in timings.items()},
            "tables": {"evaluation": {"caption": caption, "rows": _timing_rows(timings)}},
            "notes": [f"lanes / one video at a time: {fps[1] / fps[0]:.2f}×"]}


# ------------------------------------------------------------------------------ host pipeline


def host_pipeline(ctx: Context) -> dict:
    """Training steps fed from memory-mapped videos (the packed store's layout), the next batch
    built by the prefetch thread or synchronously; and the host's build time alone."""
    import tempfile

    import torch
    from _e2e import platform_stepper
    from host_pipeline import alternate, build_ms, loop_s, memmap_videos

    args = _e2e_args(ctx, "--norm", "group")
    device = torch.device(args.device)
    stepper = platform_stepper(args)

    def step(x, labels):
        torch.backends.cudnn.benchmark = stepper.fast.cudnn_benchmark
        stepper.step(x, labels, None)

    steps = 2 if ctx.smoke else 10
    with tempfile.TemporaryDirectory() as tmp:
        videos = memmap_videos(Path(tmp), 4, 4 * args.seq_len, (args.width, args.height))
        host = build_ms(videos, args.seq_len, args.videos, 3 if ctx.smoke else 20)
        loop_s(videos, args.seq_len, args.videos, 2, True, step, device)  # warm-up
        per_step = alternate(args.rounds, **{
            "synchronous": lambda: loop_s(videos, args.seq_len, args.videos, steps, False, step, device),
            "prefetch": lambda: loop_s(videos, args.seq_len, args.videos, steps, True, step, device)})
    frames = args.videos * args.seq_len
    rows = [{"what": name, "ms/step": 1000 * s, "frames/s": frames / s} for name, s in per_step.items()]
    rows.append({"what": "building one batch on the host alone", "ms/step": host,
                 "frames/s": frames / (host / 1000)})
    caption = f"{_setting(args)}; batches from memory-mapped uint8 videos"
    return {"ms_per_step": {k: 1000 * v for k, v in per_step.items()}, "build_ms": host,
            "tables": {"host_pipeline": {"caption": caption, "rows": rows}},
            "notes": [f"prefetch / synchronous speed: {per_step['synchronous'] / per_step['prefetch']:.3f}×"]}


# ------------------------------------------------------------------------------ (e) whitening


def whitening(ctx: Context) -> dict:
    """benchmarks/whitening.py's step time and memory of each norm vs BN, on this device."""
    import whitening as bench

    args = _e2e_args(ctx)
    batch, size, steps = (4, 32, 1) if ctx.smoke else (args.videos * args.seq_len, WHITENING_SIZE, 10)
    cuda = ctx.device == "cuda"
    runs = []
    for norm in bench.NORMS:
        runs.append(bench.measure(args.backbone, norm, ctx.device, batch, size, steps))
        _fresh()
    ref = runs[0]
    rows = [{"norm": r["norm"], "ms/step": r["ms"], "× BN time": r["ms"] / ref["ms"],
             "peak MiB": r["peak_mb"] if cuda else None,
             "× BN memory": r["peak_mb"] / ref["peak_mb"] if cuda else None} for r in runs]
    notes = [] if cuda else ["a CPU's peak RSS is per process: benchmarks/whitening.py measures it"]
    caption = (f"{args.backbone}, batch {batch} x 3 x {size}², forward + backward, fp32, median of "
               f"{steps} steps")
    return {"tables": {"norms": {"caption": caption, "rows": rows}}, "notes": notes}


# ------------------------------------------------------------------------------ (a) CUDA tests


def _junit_counts(path: Path) -> tuple[dict, list[dict]]:
    """pytest's junit XML: counts, and the failed tests with their messages."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [{"test": f"{case.get('classname')}::{case.get('name')}",
               "message": (bad.get("message") or "")[:300]}
              for case in root.iter("testcase") for bad in case
              if bad.tag in ("failure", "error")]
    return counts, failed


def cuda_tests(ctx: Context) -> dict:
    """tests/gpu under pytest in a child process, cut at the time budget."""
    if ctx.smoke:
        raise Skip("tests/gpu is left out of --smoke (run `pytest tests/gpu` on its own)")
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not importable (carry its wheels: benchmarks/gpu_wheels.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
        rc, out, err = run_child(cmd, min(ctx.left_s, CUDA_TESTS_MAX_S))
        if not xml.exists():
            raise RuntimeError(f"pytest {'ran past the time budget' if rc is None else f'exited {rc}'} "
                               f"without a report: {(out + err)[-1500:]}")
        counts, failed = _junit_counts(xml)
    tables = {"counts": {"caption": "python -m pytest tests/gpu", "rows": [counts]}}
    if failed:
        tables["failed"] = {"caption": "failed tests", "rows": failed}
    return {"exit_code": rc, **counts, "tables": tables, "output_tail": out[-3000:]}


# ------------------------------------------------------------------------------ the sections


SECTIONS: tuple[Section, ...] = (
    *(Section(f"e2e_{norm}", f"(b) End-to-end step, {norm} norm, eager",
              functools.partial(e2e, norm=norm, compiled=False), min_s=40)
      for norm in reversed(E2E_NORMS)),  # GN first: the paper setting of docs/benchmarks.md
    Section("profile", "(h) Profile of one platform step", profile_step, min_s=15),
    Section("loader", "(d) Loader vs the GPU step", loader_section, min_s=40, isolate=True,
            finish=loader_vs_steps),
    Section("plan_memory", "(f) `pitfalls plan` memory estimates vs measured peaks", plan_memory,
            min_s=40),
    Section("two_stage", "(c) Two-stage feature extraction", two_stage, min_s=20),
    Section("evaluation", "(g) Evaluation: one video at a time vs lanes", evaluation, min_s=30),
    Section("host_pipeline", "Host pipeline: training fed with and without the prefetch thread",
            host_pipeline, min_s=30),
    Section("whitening", "(e) Whitening norms vs BN", whitening, min_s=30),
    Section("cuda_tests", "(a) CUDA tests (tests/gpu)", cuda_tests, min_s=60, cuda_only=True),
    *(Section(f"e2e_{norm}_compiled", f"(b) End-to-end step, {norm} norm, torch.compile",
              functools.partial(e2e, norm=norm, compiled=True), min_s=150, cuda_only=True,
              isolate=True)
      for norm in reversed(E2E_NORMS)),
)
SECTION_TITLES = {s.name: s.title for s in SECTIONS}


# ------------------------------------------------------------------------------ running


def run_child(cmd: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """`cmd` in a process group of its own, output to files (no pipe a grandchild can hold);
    past `timeout_s` the group is killed (a compile's workers too). (exit code, or None when
    killed; stdout; stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            rc = None
        with contextlib.suppress(ProcessLookupError):  # what is left of the group: killed
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read()


def measured(section: Section, ctx: Context) -> dict:
    """The section's record: its figures, or why it has none (a skip, an error)."""
    try:
        return {"status": "ok", **section.run(ctx)}
    except Skip as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - one failing section must not stop the others
        return {"status": "error", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-4000:]}


def in_child(section: Section, ctx: Context) -> dict:
    """`measured` in a fresh process of this script, cut at the time budget."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(ctx.out), "--section",
               section.name, "--record", str(record), *(["--smoke"] if ctx.smoke else [])]
        rc, out, err = run_child(cmd, ctx.left_s)
        sys.stdout.write(out)
        if record.exists():
            return json.loads(record.read_text())
    why = "ran past the time budget and was stopped" if rc is None else f"exited {rc}"
    return {"status": "error", "error": f"the child process {why} without a result",
            "traceback": err[-4000:]}


def run_section(section: Section, ctx: Context) -> dict:
    """One section, guarded: skipped where it cannot run, its error recorded, timed."""
    if section.cuda_only and ctx.device != "cuda":
        return {"status": "skipped", "reason": "needs CUDA"}
    need = 0.0 if ctx.smoke else section.min_s
    if ctx.left_s < need:
        needs = f", the section needs ~{need:.0f} s" if need else ""
        return {"status": "skipped", "reason": f"time budget: {max(ctx.left_s, 0):.0f} s left{needs}"}
    t0 = time.monotonic()
    record = in_child(section, ctx) if section.isolate else measured(section, ctx)
    _fresh()
    return finished(section, {**record, "seconds": time.monotonic() - t0}, ctx)


def finished(section: Section, record: dict, ctx: Context) -> dict:
    """`record` with the section's comparisons with the others (again after each later one)."""
    if record["status"] != "ok" or section.finish is None:
        return record
    try:
        return section.finish(record, ctx)
    except Exception as e:  # noqa: BLE001 - the section's own figures stay
        return {**record, "comparison_error": f"{type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------ the report


def _command(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    """What the figures were measured on."""
    import numpy
    import pyarrow
    import timm
    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device,
            "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "cpu": _cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "commit": _command(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count,
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    driver=_command(["nvidia-smi", "--query-gpu=driver_version",
                                     "--format=csv,noheader"]),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    return info


def _plain(value):
    """JSON's values: NaN and infinities as null, numpy scalars as Python's, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if abs(value) >= 100 or value.is_integer():
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(f"{v:.2f}" if isinstance(v, float) else _cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _section_md(record: dict) -> list[str]:
    status = record["status"]
    if status == "skipped":
        return [f"_Skipped: {record['reason']}._"]
    if status == "error":
        return [f"**Error**: `{_cell(record['error'])[:500]}` (traceback in {JSON_NAME})"]
    if status == "pending":
        return ["_Not run: the suite stopped before this section._"]
    lines = []
    for tbl in record.get("tables", {}).values():
        if tbl["caption"]:
            lines += [tbl["caption"] + ":", ""]
        if tbl["rows"]:
            header = list(tbl["rows"][0])
            lines += [table(header, [[_cell(r.get(k)) for k in header] for r in tbl["rows"]]).rstrip("\n"), ""]
    notes = [f"- {note}" for note in record.get("notes", [])]
    return lines + notes + ([""] if notes else []) + [f"_({record.get('seconds', 0):.0f} s)_"]


def markdown(report: dict) -> str:
    """The report as Markdown for docs/benchmarks.md: the machine, then one part per section."""
    suite, info = report["suite"], report["machine"]
    lines = ["# GPU suite", "",
             f"`benchmarks/gpu_suite.py{' --smoke' if suite['smoke'] else ''}`, {info['date']}, "
             f"{suite['elapsed_s']:.0f} s of a {suite['budget_s']:.0f} s budget.", "",
             table(["machine", ""], [[k, _cell(v)] for k, v in info.items()]).rstrip("\n")]
    for record in report["sections"].values():
        lines += ["", f"## {record['title']}", "", *_section_md(record)]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    plain = _plain(report)
    atomic_write(out / JSON_NAME, json.dumps(plain, indent=1) + "\n")
    atomic_write(out / MD_NAME, markdown(plain))


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed (CI)")
    ap.add_argument("--budget-s", type=float,
                    help=f"overall time budget (default {GPU_BUDGET_S:.0f} s on a GPU)")
    ap.add_argument("--only", help="comma-separated section names (the rest: skipped)")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # internal: one section, in a child
    ap.add_argument("--record", type=Path, help=argparse.SUPPRESS)  # where the child writes it
    return ap.parse_args(argv)


def selected(only: str | None) -> set[str]:
    names = {s.name for s in SECTIONS}
    chosen = set(only.split(",")) if only else names
    if chosen - names:
        raise SystemExit(f"error: unknown section(s) {', '.join(sorted(chosen - names))}; "
                         f"valid: {', '.join(s.name for s in SECTIONS)}")
    return chosen


def run_suite(ctx: Context, budget_s: float, only: set[str]) -> dict:
    """Every section in order, the report rewritten after each."""
    report = {"suite": {"smoke": ctx.smoke, "budget_s": budget_s, "elapsed_s": 0.0,
                        "command": " ".join(sys.argv)},
              "machine": machine(ctx.device),
              "sections": {s.name: {"title": s.title, "status": "pending"} for s in SECTIONS}}
    start = time.monotonic()
    for section in SECTIONS:
        print(f"== {section.name}: {section.title}", flush=True)
        record = (run_section(section, ctx) if section.name in only
                  else {"status": "skipped", "reason": "not selected (--only)"})
        ctx.results[section.name] = record
        for earlier in SECTIONS[:SECTIONS.index(section)]:  # compared with what ran since
            if earlier.name in ctx.results:
                ctx.results[earlier.name] = finished(earlier, ctx.results[earlier.name], ctx)
        report["sections"] = {n: {"title": SECTION_TITLES[n], **ctx.results.get(n, {"status": "pending"})}
                              for n in SECTION_TITLES}
        report["suite"]["elapsed_s"] = time.monotonic() - start
        write_report(report, ctx.out)
        print(f"   {record['status']}" + (f": {record.get('reason') or record.get('error')}"
                                          if record["status"] != "ok" else
                                          f" in {record['seconds']:.1f} s"), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = selected(args.only)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print(f"error: the GPU suite needs CUDA, and torch {torch.__version__} sees no GPU here "
              "(--smoke runs its tiny version on a CPU)", file=sys.stderr)
        return 2
    if args.smoke:  # its figures mean nothing; one thread keeps a busy CI machine from thrashing
        torch.set_num_threads(1)
    budget = args.budget_s or (SMOKE_BUDGET_S if args.smoke else GPU_BUDGET_S)
    ctx = Context(args.out, args.smoke, "cuda" if cuda else "cpu", time.monotonic() + budget)
    if args.section:  # a child: one section, its record to --record
        section = next(s for s in SECTIONS if s.name == args.section)
        atomic_write(args.record, json.dumps(_plain(measured(section, ctx))))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report = run_suite(ctx, budget, only)
    statuses = [r["status"] for r in report["sections"].values()]
    print(f"{statuses.count('ok')} sections measured, {statuses.count('skipped')} skipped, "
          f"{statuses.count('error')} failed; {args.out / JSON_NAME}, {args.out / MD_NAME}")
    return 1 if "error" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())

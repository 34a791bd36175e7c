"""Can the data loader feed end-to-end training? JPEG decoding vs the packed store vs one step.

    uv run python benchmarks/loader.py                  # ~1-2 min on 2 CPU cores
    uv run python benchmarks/loader.py --quick          # smoke run, a few seconds
    uv run python benchmarks/loader.py --size 384x216 --videos 8 --frames 200 --seconds 5

Everything is measured in one run on a temporary dataset (deleted at the end unless --keep):

1. JPEG frames at Cholec80's native 854x480 (smooth gradients + noise + moving shapes, quality
   90, so file sizes are realistic; the mean size is printed), `--videos` x `--frames`.
2. JPEG decode + resize to `--size` with the training code path: per core = `decode_frame` in
   one thread; total = random training batches sliced from `FileFrames` (its thread pool).
3. `pack` into a frame store, once with a thread pool and once with a process pool (all cores).
4. Packed-store reads: random training batches (`SequenceSampler` + `make_batch`: memmap slices
   copied into one array, converted to a float tensor): per core = one process, one torch thread;
   total = one such process per core, running at the same time.
5. What one training step consumes: `build_model` (default resnet18, random init, GroupNorm)
   forward + backward + AdamW step on CUDA if present, else CPU, frames/s = B*T / step time.

The target is loader total >= 5x training consumption. All files are freshly written, so reads
come from the page cache: a store larger than RAM reads at disk speed instead.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NATIVE = (854, 480)  # Cholec80's resolution (W, H)
TARGET = 5  # loader frames/s (total) over what training consumes
NUM_PHASES = 7


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


# ------------------------------------------------------------------------------ the dataset


def video_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth colour gradients (low-frequency sinusoids) plus sensor-like noise, float32."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 160, size=3).astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        field = np.zeros((h, w), np.float32)
        for _ in range(4):
            fx, fy = rng.uniform(0.5, 4, size=2) * 2 * np.pi
            field += rng.uniform(10, 30) * np.sin(fx * xx / w + fy * yy / h + rng.uniform(0, 6.3))
        img[..., c] = base[c] + field
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return img


def write_video(folder: Path, frames: int, seed: int, quality: int = 90) -> list[Path]:
    """JPEG frames of one video: a drifting textured scene with moving ellipses (instruments)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = NATIVE
    margin = 48
    texture = np.clip(video_texture(rng, (h + 2 * margin, w + 2 * margin)), 0, 255).astype(np.uint8)
    shapes = [(rng.uniform(0, w, 2), rng.uniform(-6, 6, 2), rng.uniform(30, 120, 2),
               tuple(int(c) for c in rng.integers(0, 255, 3))) for _ in range(4)]
    folder.mkdir(parents=True)
    paths = []
    for t in range(frames):
        dx, dy = (margin + margin * np.sin([t / 17 + seed, t / 23 + seed])).astype(int)
        img = Image.fromarray(texture[dy:dy + h, dx:dx + w])
        draw = ImageDraw.Draw(img)
        for pos, vel, radius, colour in shapes:
            cx, cy = (pos + vel * t) % (w, h)
            draw.ellipse([cx - radius[0], cy - radius[1], cx + radius[0], cy + radius[1]],
                         fill=colour)
        path = folder / f"{t:08d}.jpg"
        img.save(path, quality=quality)
        paths.append(path)
    return paths


def make_dataset(root: Path, videos: int, frames: int) -> list[list[Path]]:
    return [write_video(root / f"video{i:02d}", frames, seed=i) for i in range(videos)]


def as_videos(paths: list[list[Path]], size: tuple[int, int]) -> list:
    from pitfalls.data.base import FileFrames, Video

    out = []
    for i, ps in enumerate(paths):
        phases = (np.arange(len(ps)) * NUM_PHASES // len(ps)).astype(np.int64)
        tools = (np.arange(len(ps))[:, None] % (np.arange(3) + 2) == 0).astype(np.uint8)
        out.append(Video(f"video{i:02d}", FileFrames(ps, size), phases, tools))
    return out


# ------------------------------------------------------------------------------ measurements


def decode_per_core(paths: list[Path], size: tuple[int, int], seconds: float) -> float:
    """decode_frame (the code FileFrames runs per file) in this thread, frames/s."""
    from pitfalls.data.base import decode_frame

    n, t0 = 0, time.perf_counter()
    while True:
        for p in paths:
            decode_frame(p, size)
            n += 1
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def make_batch(videos: list, picks: list[tuple[int, int]], seq_len: int, device):
    """What the training loop does per step: slice each sequence (a memmap view or a FileFrames
    decode), stack into one contiguous array, convert to the network's input on `device`."""
    from pitfalls.models.inputs import make_batch as batch

    x, (labels,) = batch(videos, picks, seq_len, device)
    return x, labels


def batches_per_s(videos: list, seq_len: int, videos_per_batch: int, seconds: float,
                  seed: int = 0) -> float:
    """Random training batches (the platform's SequenceSampler), frames/s."""
    import torch

    from pitfalls.data.sampler import SequenceSampler

    sampler = SequenceSampler([len(v) for v in videos], seq_len, videos_per_batch,
                              np.random.default_rng(seed))
    cpu = torch.device("cpu")
    make_batch(videos, sampler.sample(), seq_len, cpu)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, _ = make_batch(videos, sampler.sample(), seq_len, cpu)
        n += x.shape[0] * x.shape[1]
    return n / (time.perf_counter() - t0)


def _store_reader(store: str, seq_len: int, videos_per_batch: int, seconds: float, seed: int,
                  barrier) -> float:
    """One loader process: its own open_store (memmap, nothing copied), one torch thread."""
    import torch

    from pitfalls.data.store import open_store

    torch.set_num_threads(1)
    videos = open_store(store).videos
    barrier.wait()
    return batches_per_s(videos, seq_len, videos_per_batch, seconds, seed)


def store_reads(store: Path, procs: int, seq_len: int, videos_per_batch: int,
                seconds: float) -> list[float]:
    """frames/s of `procs` loader processes reading the store at the same time."""
    # fork, like torch's DataLoader workers: no re-import of torch per process
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ctx.Manager() as manager:
        barrier = manager.Barrier(procs)
        with ctx.Pool(procs) as pool:
            jobs = [pool.apply_async(_store_reader, (str(store), seq_len, videos_per_batch,
                                                     seconds, seed, barrier))
                    for seed in range(procs)]
            return [j.get() for j in jobs]


def training_frames_per_s(videos: list, args: argparse.Namespace, device) -> tuple[float, float]:
    """The platform's train step (fp32 forward + backward + AdamW); (frames/s, s/step)."""
    import torch
    import torch.nn.functional as F

    from pitfalls.data.sampler import SequenceSampler
    from pitfalls.models.video_model import build_model

    torch.manual_seed(0)
    model = build_model(backbone=args.backbone, norm=args.norm, frozen_stages=0,
                        num_classes=NUM_PHASES).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sampler = SequenceSampler([len(v) for v in videos], args.seq_len, args.videos_per_batch,
                              np.random.default_rng(0))
    batches = [make_batch(videos, sampler.sample(), args.seq_len, device) for _ in range(4)]

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(args.warmup_steps):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(args.train_steps):
        step(i)
    sync()
    per_step = (time.perf_counter() - t0) / args.train_steps
    return args.seq_len * args.videos_per_batch / per_step, per_step


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=100, help="frames per video")
    ap.add_argument("--size", type=parse_size, default=None,
                    help="training input WxH (default 384x216, the paper's; --quick: 96x54)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 8 (CPU), 16 (CUDA)")
    ap.add_argument("--videos-per-batch", type=int, default=None, help="default 2 (CPU), 8 (CUDA)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--norm", default="group")
    ap.add_argument("--seconds", type=float, default=3.0, help="per loader measurement")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="timed steps (default 3 CPU, 20 CUDA)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default 1 (CPU), 5 (CUDA)")
    ap.add_argument("--workers", type=int, default=None, help="cores to use (default: all)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    ap.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    args = ap.parse_args(argv)
    if args.quick:
        args.videos, args.frames, args.seconds = 2, 12, 0.3
        args.seq_len = args.seq_len or 2
        args.videos_per_batch = args.videos_per_batch or 2
        args.train_steps = args.train_steps or 1
        args.warmup_steps = 0 if args.warmup_steps is None else args.warmup_steps
        args.size = args.size or (96, 54)
    args.size = args.size or (384, 216)
    return args


def settle_defaults(args: argparse.Namespace, cuda: bool) -> argparse.Namespace:
    """The batch shape and step counts left unset, for the training device."""
    args.seq_len = args.seq_len or (16 if cuda else 8)
    args.videos_per_batch = args.videos_per_batch or (8 if cuda else 2)
    args.train_steps = args.train_steps or (20 if cuda else 3)
    args.warmup_steps = (5 if cuda else 1) if args.warmup_steps is None else args.warmup_steps
    return args


def loader_figures(args: argparse.Namespace, cores: int, device=None) -> dict[str, float]:
    """Every loader figure (frames/s) in one run on a temporary dataset (kept with --keep); with
    a torch `device`, also what one training step there consumes (`train`, `step_s`).
    benchmarks/gpu_suite.py calls it without a device: it compares with its own GPU step."""
    import torch

    from pitfalls.data.base import FileFrames, Video
    from pitfalls.data.store import open_store, pack

    names, tools = [f"p{i}" for i in range(NUM_PHASES)], ["a", "b", "c"]
    figures: dict[str, float] = {}
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        t0 = time.perf_counter()
        paths = make_dataset(root / "jpeg", args.videos, args.frames)
        all_paths = [p for ps in paths for p in ps]
        figures["frames"] = n = len(all_paths)
        figures["jpeg_kib"] = kb = np.mean([p.stat().st_size for p in all_paths]) / 1024
        print(f"dataset: {args.videos} videos x {args.frames} JPEG frames at "
              f"{NATIVE[0]}x{NATIVE[1]}, mean {kb:.0f} KiB/frame "
              f"(written in {time.perf_counter() - t0:.1f} s)", flush=True)
        videos = as_videos(paths, args.size)

        torch.set_num_threads(1)
        figures["jpeg_core"] = decode_per_core(all_paths, args.size, args.seconds)
        torch.set_num_threads(cores)
        figures["jpeg_total"] = batches_per_s(videos, args.seq_len, args.videos_per_batch,
                                              args.seconds)
        print(f"jpeg: {figures['jpeg_core']:.0f} frames/s per core, "
              f"{figures['jpeg_total']:.0f} total", flush=True)

        # untimed warm-up: lazy imports (pyarrow pulls in pandas on first use, ~1-2 s) are paid
        # here, not by whichever pool is timed first
        pack([Video(v.id, FileFrames(v.frames.paths[:2], args.size), v.phases[:2], v.tools[:2])
              for v in videos[:1]], names, tools, root / "warm-up", args.size, dataset="bench",
             source="warm-up", workers=1)
        for pool in ("thread", "process"):
            t0 = time.perf_counter()
            pack(videos, names, tools, root / f"store-{pool}", args.size, dataset="bench",
                 source=str(root / "jpeg"), workers=cores, pool=pool)
            figures[f"pack_{pool}"] = n / (time.perf_counter() - t0)
        same = all(np.array_equal(a.frames, b.frames) for a, b in zip(
            open_store(root / "store-thread").videos, open_store(root / "store-process").videos))
        figures["identical_stores"] = same
        print(f"pack ({cores} workers): threads {figures['pack_thread']:.0f} frames/s, "
              f"processes {figures['pack_process']:.0f} frames/s (identical stores: {same})",
              flush=True)

        store = root / "store-thread"
        figures["store_core"] = store_reads(store, 1, args.seq_len, args.videos_per_batch,
                                            args.seconds)[0]
        per_proc = store_reads(store, cores, args.seq_len, args.videos_per_batch, args.seconds)
        figures["store_total"] = sum(per_proc)
        print(f"store: {figures['store_core']:.0f} frames/s per core, "
              f"{figures['store_total']:.0f} total ({cores} processes)", flush=True)

        if device is not None:
            torch.set_num_threads(cores)
            stored = open_store(store).videos
            figures["train"], figures["step_s"] = training_frames_per_s(stored, args, device)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    settle_defaults(args, cuda)
    cores = args.workers or len(os.sched_getaffinity(0))
    w, h = args.size
    load_before = os.getloadavg()[0]
    figures = loader_figures(args, cores, device)
    n, per_step = int(figures["frames"]), figures["step_s"]

    device_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu")
    batch = f"{args.videos_per_batch}x{args.seq_len}"
    print()
    print(f"machine: {os.cpu_count()} CPUs ({cores} used), torch {torch.__version__}, "
          f"device {device} ({device_name}), python {sys.version.split()[0]}")
    print(f"load average (1 min): {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end "
          f"(other jobs on the machine skew every figure)")
    print(f"input {w}x{h}, batch {batch} frames, {args.backbone}/{args.norm}, "
          f"train step {per_step * 1000:.0f} ms")
    print()
    rows = [
        ("JPEG decode+resize", figures["jpeg_core"], figures["jpeg_total"]),
        ("packed store read", figures["store_core"], figures["store_total"]),
    ]
    print(f"| {'source':<22} | {'frames/s per core':>17} | {'frames/s total':>14} | "
          f"{'total / training':>16} |")
    print(f"|{'-' * 24}|{'-' * 18}:|{'-' * 15}:|{'-' * 17}:|")
    for name, core, total in rows:
        print(f"| {name:<22} | {core:>17.0f} | {total:>14.0f} | "
              f"{total / figures['train']:>15.1f}x |")
    print(f"| {'training consumes':<22} | {'':>17} | {figures['train']:>14.1f} | {'1.0x':>16} |")
    print()
    print("JPEG per core: decode_frame alone; JPEG total: the training path in one process "
          "(FileFrames' thread pool + to_input).")
    print(f"packed: sequence slices stacked + to_input (float on the CPU), per core = 1 process, "
          f"total = {cores} processes.")
    print(f"pack: threads {figures['pack_thread']:.0f} frames/s, processes "
          f"{figures['pack_process']:.0f} frames/s ({cores} workers, {n} frames; process pool "
          f"start-up included)")
    for name, _, total in rows:
        ok = "meets" if total >= TARGET * figures["train"] else "MISSES"
        print(f"{name}: {ok} the {TARGET}x target ({total / figures['train']:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

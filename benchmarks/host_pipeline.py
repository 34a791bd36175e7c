"""Does building the next batch in a background thread hide the host's work behind the step?

    uv run python benchmarks/host_pipeline.py             # ~1 min on 2 CPU cores
    uv run python benchmarks/host_pipeline.py --quick     # smoke run, seconds
    uv run python benchmarks/host_pipeline.py --device-step-ms 180   # a measured GPU step time

Needs torch, timm and numpy (no Ray, Optuna or MLflow). Videos are memory-mapped uint8 files
in a temporary directory (as the packed store holds them), batches are the training loop's
(`SequenceSampler` picks, `sequence_arrays`, the feeder of `pitfalls.train.prefetch`).

1. Host work alone: building one batch (memmap slices copied into the batch buffer), ms.
2. A real CPU training step (`Stepper`, resnet18-GN + LSTM at the CPU sizes of the e2e
   benchmarks): steps/s with the prefetch thread against without, alternating rounds. On a CPU
   the step and the thread share the cores: this says what prefetching costs there.
3. A simulated device step: the step is a sleep of `--device-step-ms` (default: the host
   build time of 1., the hardest case to hide), as a GPU step leaves the host free while it
   runs, on torch's meta device (copy and conversion cost the host nothing, as on a GPU).
   Without prefetching a step takes build + device; with it, max(build, device).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pitfalls.data.base import Video
from pitfalls.data.sampler import SequenceSampler
from pitfalls.models.inputs import sequence_arrays
from pitfalls.train.prefetch import HostBatch, HostBuffers, draws, feeder

CPU = torch.device("cpu")
META = torch.device("meta")  # a simulated device: tensors without data


def memmap_videos(root: Path, videos: int, frames: int, size: tuple[int, int]) -> list[Video]:
    """Random uint8 videos in memory-mapped files (the packed store's layout: one per video)."""
    rng = np.random.default_rng(0)
    w, h = size
    out = []
    for i in range(videos):
        mm = np.lib.format.open_memmap(root / f"v{i}.npy", "w+", np.uint8, (frames, h, w, 3))
        mm[:] = rng.integers(0, 256, size=mm.shape, dtype=np.uint8)
        mm.flush()
        out.append(Video(f"v{i}", np.load(root / f"v{i}.npy", mmap_mode="r"),
                         (np.arange(frames) % 7).astype(np.int64),
                         np.zeros((frames, 0), np.uint8)))
    return out


def builder(videos: list[Video], seq_len: int):
    def build(picks):
        frames, labels = sequence_arrays(videos, picks, seq_len)
        return HostBatch(frames, seq_len, labels)
    return build


def build_ms(videos: list[Video], seq_len: int, per_batch: int, n: int) -> float:
    """Median ms to build one batch into a reused buffer (the thread's work)."""
    sampler = SequenceSampler([len(v) for v in videos], seq_len, per_batch, np.random.default_rng(1))
    build, buffers, times = builder(videos, seq_len), HostBuffers(CPU), []
    for _ in range(n):
        t0 = time.perf_counter()
        batch = build(sampler.sample())
        batch.fill(buffers.take(batch.shape).host.numpy())
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def loop_s(videos: list[Video], seq_len: int, per_batch: int, steps: int, prefetch: bool,
           step, device: torch.device = CPU) -> float:
    """Seconds per step of `steps` training steps fed with or without the thread."""
    sampler = SequenceSampler([len(v) for v in videos], seq_len, per_batch, np.random.default_rng(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with feeder(builder(videos, seq_len), device, prefetch, HostBuffers(device)) as feed:
        for _, (x, labels) in feed.batches(draws(sampler.sample, steps)):
            step(x, labels)
    sync()
    return (time.perf_counter() - t0) / steps


def alternate(rounds: int, **loops) -> dict[str, float]:
    """Median seconds per step of each loop, rounds alternating between them."""
    times: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(rounds):
        for name, fn in loops.items():
            times[name].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def real_step():
    """The platform's training step on the CPU (the e2e benchmarks' CPU setting)."""
    from pitfalls.config import PerformanceSpec
    from pitfalls.models.heads import LSTMHead
    from pitfalls.models.video_model import build_model
    from pitfalls.train.fast import Stepper, prepare_model, resolve
    from pitfalls.train.tasks import PhaseTask

    fast = resolve(PerformanceSpec(), CPU)
    torch.manual_seed(0)
    model = prepare_model(build_model(backbone="resnet18", norm="group", frozen_stages=0,
                                      num_classes=7, head_options=LSTMHead(hidden_size=512),
                                      load_weights=False), fast)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stepper = Stepper(model, opt, PhaseTask(7).loss, fast, model.head.lanes)
    return lambda x, labels: stepper.step(x, labels, None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--device-step-ms", type=float, help="simulated device step (default: the build time)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    # paper-size batches for the host side (1 x 64 frames of 384x216); the real CPU step at
    # the e2e benchmarks' CPU sizes (2 x 8 frames of 192x108)
    big = ((96, 54), 8, 1) if args.quick else ((384, 216), 64, 1)
    small = ((64, 36), 4, 2) if args.quick else ((192, 108), 8, 2)
    steps = 2 if args.quick else 6
    rounds = 1 if args.quick else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "big").mkdir()
        (root / "small").mkdir()
        size, seq, per = big
        videos = memmap_videos(root / "big", 4, 4 * seq, size)
        host = build_ms(videos, seq, per, 5 if args.quick else 30)
        print(f"1. building one {per} x {seq} x {size[0]}x{size[1]} batch: {host:.1f} ms")

        device_ms = args.device_step_ms or host
        sleep = lambda x, labels: time.sleep(device_ms / 1000)
        # the "device" is torch's meta device: the copy and the conversion cost the host nothing,
        # as on a GPU (an asynchronous copy, the conversion in a kernel)
        loop_s(videos, seq, per, 2, True, sleep, META)  # warm-up
        sim = alternate(rounds, sync=lambda: loop_s(videos, seq, per, steps * 3, False, sleep, META),
                        thread=lambda: loop_s(videos, seq, per, steps * 3, True, sleep, META))
        hidden = (sim["sync"] - sim["thread"]) / (host / 1000)
        print(f"3. simulated device step of {device_ms:.1f} ms: {1000 * sim['sync']:.1f} ms/step "
              f"without the thread, {1000 * sim['thread']:.1f} ms/step with it "
              f"(host time hidden: {100 * hidden:.0f}% of the build)")

        size, seq, per = small
        videos = memmap_videos(root / "small", 4, 4 * seq, size)
        step = real_step()
        loop_s(videos, seq, per, 1, False, step)  # warm-up
        cpu = alternate(rounds, sync=lambda: loop_s(videos, seq, per, steps, False, step),
                        thread=lambda: loop_s(videos, seq, per, steps, True, step))
        print(f"2. CPU training step ({per} x {seq} frames of {size[0]}x{size[1]}, resnet18-GN + "
              f"LSTM 512): {1000 * cpu['sync']:.0f} ms/step without the thread, "
              f"{1000 * cpu['thread']:.0f} ms/step with it: thread/sync = "
              f"{cpu['sync'] / cpu['thread']:.3f}x speed")


if __name__ == "__main__":
    main()

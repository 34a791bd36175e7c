"""The host side of batches, overlapped with the device: while step k runs, a background thread
builds step k+1's batch (memory-mapped slices copied, uint8, into a reused pinned buffer on a
GPU), so the device does not wait for the host between two steps. Training steps and the
lane evaluation (`pitfalls.train.evaluation`) use it.

Determinism: the draws (a sampler's picks) are made in the caller's thread, in step order, by
a lazy iterator the feeder pulls at most `depth` steps ahead and never past its end (an
epoch's steps), so the batches, their order and the sampler's state at every checkpoint are
those of the synchronous loop: resume stays bit-exact. Only the copying moves to the thread.

Buffers: a ring of `depth + 2` host buffers (pinned on a GPU), each holding a batch of any
shape in its first bytes. On a GPU the host-to-device copy is asynchronous, so a buffer is
refilled only after the copy that read it has finished (a CUDA event per buffer); on a CPU the
frames are converted to float before the next batch is handed out, which is before their
buffer can come round again.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pitfalls.models.inputs import frames_to_input

Draw = tuple[Any, Any]  # (picks, what the sampler drew with them: a carried lane's resets, or None)
Batch = tuple[torch.Tensor, tuple[torch.Tensor, ...]]  # frames (B, T, 3, H, W), labels on the device


@dataclass
class HostBatch:
    """A batch on the host before it is copied: `frames[i]` fills lane i's first len(frames[i])
    frames of `length`, the rest are zeros (a video's last, shorter chunk in evaluation)."""

    frames: list[np.ndarray]  # each (t_i <= length, H, W, 3) uint8
    length: int
    labels: tuple[np.ndarray, ...] = ()  # host labels, (B, T, ...) each

    @property
    def shape(self) -> tuple[int, ...]:
        frame = next(f.shape[1:] for f in self.frames if len(f))  # idle lanes hold no frames
        return (len(self.frames), self.length, *frame)

    def fill(self, out: np.ndarray) -> None:
        """Copy the lanes into `out` (one copy per lane, no temporary)."""
        for lane, f in zip(out, self.frames):
            n = len(f)
            if n:
                lane[:n] = f
            lane[n:] = 0


Build = Callable[[Any], HostBatch]  # picks -> the host batch


@dataclass
class _Slot:
    storage: torch.Tensor  # flat uint8, pinned on a GPU run; grows to the largest batch
    host: torch.Tensor  # the current batch: a contiguous view of the storage's first bytes
    copied: "torch.cuda.Event | None" = None  # the last host-to-device copy that read it


@dataclass
class HostBuffers:
    """A ring of reused host buffers (kept across epochs). One ring serves every batch shape
    (training steps, evaluation passes of several lengths): a buffer holds a batch in its first
    bytes and grows when a larger one comes, so the pinned memory held is `size` x the largest
    batch, not that per shape."""

    device: torch.device
    size: int = 4
    _ring: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, shape: tuple[int, ...]) -> _Slot:
        """The least recently used buffer, viewed as `shape`, once no copy reads it any more."""
        n = int(np.prod(shape))
        with self._lock:
            slot = self._ring.popleft() if len(self._ring) == self.size else None
            if slot is None:
                slot = _Slot(self._alloc(n), torch.empty(0, dtype=torch.uint8))
            self._ring.append(slot)
        if slot.copied is not None:
            slot.copied.synchronize()
            slot.copied = None
        if slot.storage.numel() < n:
            slot.storage = self._alloc(n)
        slot.host = slot.storage[:n].view(shape)
        return slot

    def _alloc(self, n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.uint8, pin_memory=self.device.type == "cuda")


def _on_host(build: Build, buffers: HostBuffers, picks: Any) -> tuple[_Slot, tuple[np.ndarray, ...]]:
    """The batch of `picks` built into a buffer of the ring (the feeder thread's work)."""
    batch = build(picks)
    slot = buffers.take(batch.shape)
    batch.fill(slot.host.numpy())
    return slot, batch.labels


def _to_device(slot: _Slot, labels: tuple[np.ndarray, ...], device: torch.device) -> Batch:
    x = frames_to_input(slot.host, device)
    if device.type == "cuda":
        slot.copied = torch.cuda.Event()
        slot.copied.record()
    return x, tuple(torch.from_numpy(y).to(device, non_blocking=True) for y in labels)


class Prefetcher:
    """Builds batches in one background thread, at most `depth` steps ahead. A context
    manager: leaving it stops the thread (after an error too)."""

    def __init__(self, build: Build, device: torch.device, buffers: HostBuffers | None = None,
                 depth: int = 2):
        self.build, self.device, self.depth = build, device, depth
        self.buffers = buffers or HostBuffers(device, depth + 2)
        if self.buffers.size < depth + 2:
            raise ValueError(f"{self.buffers.size} buffers cannot serve depth {depth}")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pitfalls-prefetch")

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, draws: Iterator[Draw]) -> Iterator[tuple[Draw, Batch]]:
        """(draw, its batch on the device) for each draw, in order."""
        pending: deque[tuple[Draw, Future]] = deque()

        def submit() -> None:
            draw = next(draws, None)
            if draw is not None:
                pending.append((draw, self._pool.submit(_on_host, self.build, self.buffers, draw[0])))

        for _ in range(self.depth):
            submit()
        while pending:
            draw, future = pending.popleft()
            slot, labels = future.result()
            submit()
            yield draw, _to_device(slot, labels, self.device)


class Synchronous:
    """The same interface without a thread: each batch built when it is needed."""

    def __init__(self, build: Build, device: torch.device, buffers: HostBuffers | None = None):
        self.build, self.device = build, device
        self.buffers = buffers or HostBuffers(device, 2)

    def __enter__(self) -> "Synchronous":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def batches(self, draws: Iterator[Draw]) -> Iterator[tuple[Draw, Batch]]:
        for draw in draws:
            yield draw, _to_device(*_on_host(self.build, self.buffers, draw[0]), self.device)


def feeder(build: Build, device: torch.device, prefetch: bool,
           buffers: HostBuffers | None = None) -> Prefetcher | Synchronous:
    """The batch feeder a run's `performance.prefetch` resolved to."""
    return Prefetcher(build, device, buffers) if prefetch else Synchronous(build, device, buffers)


def draws(sample: Callable[[], Any], steps: int, carried: bool = False) -> Iterator[Draw]:
    """`steps` draws of `sample` as (picks, resets) pairs (`carried`: the sampler returns both;
    else resets are None), made lazily as the feeder pulls them."""
    for _ in range(steps):
        yield sample() if carried else (sample(), None)


__all__ = ["Batch", "Build", "Draw", "HostBatch", "HostBuffers", "Prefetcher", "Synchronous",
           "draws", "feeder"]

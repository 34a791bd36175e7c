"""Batches as the network takes them: the picked sequences stacked on the host, then uint8
(..., H, W, 3) -> float (..., 3, H, W) in [-1, 1] on the device. The one conversion every path
uses (training, evaluation, probes, the planner, benchmarks, the reproduction's pretraining).

Pretrained weights expect their own input normalization (timm's `pretrained_cfg` mean and std
of [0, 1] pixels): `InputNorm` maps [-1, 1] to it inside the model, on the device, so every
path that runs the model gets it; a model without pretrained weights has none and computes
exactly what it did before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def to_input(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1] on `device` (converted there)."""
    x = torch.from_numpy(frames)
    if device.type == "cuda":
        x = x.pin_memory()
    return frames_to_input(x, device)


def frames_to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`to_input` of a uint8 host tensor (pinned on a GPU run: the copy is asynchronous)."""
    x = x.to(device, non_blocking=True)
    return x.movedim(-1, -3).float().div_(127.5).sub_(1.0)


class InputNorm(torch.nn.Module):
    """[-1, 1] inputs (`to_input`) -> (x01 - mean) / std per channel, as the pretrained weights
    were trained (x01 = (x + 1) / 2), as one multiply-add. The buffers are not persistent: a
    checkpoint holds the same tensors with or without it."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        m = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
        self.register_buffer("scale", (0.5 / s).float(), persistent=False)
        self.register_buffer("shift", ((0.5 - m) / s).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def sequence_arrays(videos, picks: list[tuple[int, int]], seq_len: int,
                    labels: Callable[[Any], tuple[np.ndarray, ...]] = lambda v: (v.phases,)
                    ) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
    """Host arrays of the picked sequences ((video index, start frame) each): each sequence's
    frames (T, H, W, 3) uint8, not yet stacked (the prefetcher stacks them into a reused
    buffer), and each of `labels(video)`'s per-frame arrays stacked as (B, T, ...)."""
    frames = [np.asarray(videos[v].frames[s:s + seq_len]) for v, s in picks]
    per_label = zip(*(labels(videos[v]) for v, _ in picks))
    return frames, tuple(np.stack([lab[s:s + seq_len] for lab, (_, s) in zip(per_video, picks)])
                         for per_video in per_label)


def batch_arrays(videos, picks: list[tuple[int, int]], seq_len: int,
                 labels: Callable[[Any], tuple[np.ndarray, ...]] = lambda v: (v.phases,)
                 ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """`sequence_arrays` with the frames stacked: (B, T, H, W, 3) uint8."""
    frames, host_labels = sequence_arrays(videos, picks, seq_len, labels)
    return np.stack(frames), host_labels


def make_batch(videos, picks: list[tuple[int, int]], seq_len: int, device: torch.device,
               labels: Callable[[Any], tuple[np.ndarray, ...]] = lambda v: (v.phases,)
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Frames (B, T, 3, H, W) and per-frame labels (each (B, T, ...)) on `device`."""
    frames, host_labels = batch_arrays(videos, picks, seq_len, labels)
    return to_input(frames, device), tuple(torch.from_numpy(y).to(device) for y in host_labels)

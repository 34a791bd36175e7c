"""CNN + temporal head, trained end to end: per-frame outputs for (B, T, C, H, W) input; and the
one chunked, state-carrying forward pass over a whole video (evaluation, the cheat gap)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pitfalls.models.backbone import create_backbone, feature_dim, freeze_stages
from pitfalls.models.heads import HEADS
from pitfalls.models.inputs import to_input
from pitfalls.models.norms import NormOptions, convert_norms
from pitfalls.models.temporal import State


class VideoModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        b, t = x.shape[:2]
        # All B*T frames go through the CNN as one batch: with BN, their statistics mix.
        feats = self.backbone(x.flatten(0, 1)).view(b, t, -1)
        return self.head(feats, state)


def build_model(*, backbone: str, norm: str, frozen_stages: int, num_classes: int,
                temporal_head: str = "lstm", head_options: object | None = None,
                norm_options: NormOptions = NormOptions(), weights: str | None = None) -> VideoModel:
    """Backbone (weights loaded first) -> norm conversion -> stage freezing -> temporal head.

    `head_options` is the head's options dataclass (`HEADS[temporal_head]`, its defaults if None).
    """
    options = head_options if head_options is not None else HEADS[temporal_head]()
    if options.type != temporal_head:
        raise ValueError(f"head options of type {options.type!r} given for head {temporal_head!r}")
    cnn = create_backbone(backbone, weights, norm)
    cnn = convert_norms(cnn, norm, norm_options)
    freeze_stages(cnn, frozen_stages)
    return VideoModel(cnn, options.build(feature_dim(cnn), num_classes))


def chunk_bounds(frames: int, size: int, *, merge_single: bool = False) -> list[tuple[int, int]]:
    """[start, stop) of consecutive chunks of `size` frames. `merge_single`: a 1-frame remainder
    joins the chunk before it (BN in train mode needs more than one value per channel)."""
    bounds = [(a, min(a + size, frames)) for a in range(0, frames, size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], frames)]
    return bounds


def forward_video(model: VideoModel, frames, bounds: list[tuple[int, int]], device: torch.device,
                  *, carry_state: bool = True, prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                  autocast=None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """One video (frames sliceable as (T, H, W, 3) uint8) through the model chunk by chunk, in
    order: yields (start, stop, float32 outputs (1, stop - start, C)) per chunk. The head's state
    is carried from chunk to chunk (as a deployed model would run) unless `carry_state` is false
    (each chunk then starts fresh, as a training sequence does). `prepare` sets the input's
    memory layout; `autocast` is the mixed-precision context factory."""
    state = None
    for start, stop in bounds:
        x = prepare(to_input(np.asarray(frames[start:stop])[None], device))
        if autocast is None:
            out, new_state = model(x, state)
        else:
            with autocast():
                out, new_state = model(x, state)
        state = new_state if carry_state else None
        yield start, stop, out.float()

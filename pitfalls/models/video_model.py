"""CNN + temporal head, trained end to end: per-frame outputs for (B, T, C, H, W) input; and the
one chunked, state-carrying forward pass over a whole video (evaluation, the cheat gap)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pitfalls.models.backbone import create_backbone, feature_dim, freeze_stages
from pitfalls.models.frame_head import FrameClassifier
from pitfalls.models.heads import HEADS
from pitfalls.models.inputs import InputNorm, to_input
from pitfalls.models.norms import NormOptions, convert_norms, keeping, norm_kinds, replaced_norms
from pitfalls.models.temporal import LossOf, State, training_loss


class VideoModel(nn.Module):
    """`input_norm`: the pretrained weights' input normalization (None: inputs go to the CNN as
    `to_input` makes them); `reinitialized`: the backbone's norm layers that replaced pretrained
    ones of another kind and started from scratch (None: no pretrained weights)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, input_norm: InputNorm | None = None,
                 reinitialized: tuple[str, ...] | None = None):
        super().__init__()
        self.input_norm = input_norm
        self.backbone = backbone
        self.head = head
        self.reinitialized = reinitialized

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) input -> (N, F) CNN features: everything before the temporal head
        (a two-stage trial stores these)."""
        if self.input_norm is not None:
            frames = self.input_norm(frames)
        return self.backbone(frames)

    def forward(self, x: torch.Tensor, state: State | None = None,
                loss: LossOf | None = None) -> tuple[torch.Tensor, State]:
        """(outputs (B, T, C), state); with `loss` (the task's loss of an output on the batch's
        labels) (the head's training loss, state) instead: computed in `forward`, so that DDP's
        forward sees it, and by the head (`temporal.training_loss`)."""
        b, t = x.shape[:2]
        # All B*T frames go through the CNN as one batch: with BN, their statistics mix.
        feats = self.frame_features(x.flatten(0, 1)).view(b, t, -1)
        if loss is not None:
            return training_loss(self.head, feats, state, loss)
        return self.head(feats, state)


def build_model(*, backbone: str, norm: str, frozen_stages: int, num_classes: int,
                temporal_head: str | None = "lstm", head_options: object | None = None,
                norm_options: NormOptions = NormOptions(), weights: str | None = None,
                pretrained: bool = False, reinit_replaced_norms: bool = False,
                load_weights: bool = True) -> VideoModel:
    """Backbone (weights loaded first) -> norm conversion -> stage freezing -> temporal head.

    `head_options` is the head's options dataclass (`HEADS[temporal_head]`, its defaults if None).
    `temporal_head=None`: a frame classifier (no temporal context; `frame_only` training).
    `pretrained`: timm's weights for `backbone` (`create_backbone`), inputs normalized with
    their mean/std (`InputNorm`); the norm layers `norm` keeps keep their weights, and a `norm`
    that replaces pretrained layers by another kind is refused unless `reinit_replaced_norms`
    (those start from scratch; `VideoModel.reinitialized` names them). `load_weights=False`:
    that model with random weights (the planner measures cost, not accuracy).
    """
    options = None
    if temporal_head is not None:
        options = head_options if head_options is not None else HEADS[temporal_head]()
        if options.type != temporal_head:
            raise ValueError(f"head options of type {options.type!r} given for head {temporal_head!r}")
    cnn = create_backbone(backbone, weights, norm, pretrained=pretrained and load_weights)
    reinitialized = tuple(replaced_norms(cnn, norm)) if pretrained else None
    if reinitialized and not reinit_replaced_norms:
        raise ValueError(
            f"norm {norm!r} replaces {len(reinitialized)} pretrained norm layers of {backbone} "
            f"({', '.join(norm_kinds(cnn))}; e.g. {reinitialized[0]}) by another kind, losing their "
            f"weights; norms that keep them: {', '.join(keeping(norm_kinds(cnn)))} (or "
            "reinit_replaced_norms: start them from scratch)")
    cnn = convert_norms(cnn, norm, norm_options, pretrained=pretrained)
    freeze_stages(cnn, frozen_stages)
    input_norm = InputNorm(cnn.pretrained_cfg["mean"], cnn.pretrained_cfg["std"]) if pretrained else None
    head = (FrameClassifier(feature_dim(cnn), num_classes) if options is None
            else options.build(feature_dim(cnn), num_classes))
    return VideoModel(cnn, head, input_norm, reinitialized)


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

"""Training-time augmentation on the training device, for a whole batch at once.

Decoding is done once (packed store); augmentation then runs as a few batched tensor ops on the
GPU instead of per-frame PIL work in loader processes. Parameters are drawn per *sequence*: every
frame of a sequence gets the same flip, crop and colour change, like one camera would give, so
augmentation never creates fake motion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pitfalls.config import AugmentSpec


def augment(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """x: (B, T, 3, H, W) in [-1, 1] -> augmented copy; draws come from `generator` (CPU)."""
    if not spec.enabled:
        return x
    b, t = x.shape[:2]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device, non_blocking=True)

    frames = x.flatten(0, 1)
    if spec.min_crop < 1 or spec.hflip:
        scale = spec.min_crop + (1 - spec.min_crop) * draw(b)  # side length, relative
        shift = (1 - scale) * (2 * draw(2, b) - 1)  # crop centre stays inside the frame
        flip = torch.where(draw(b) < spec.hflip, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = scale * flip
        theta[:, 1, 1] = scale
        theta[:, 0, 2], theta[:, 1, 2] = shift[0], shift[1]
        grid = F.affine_grid(theta.repeat_interleave(t, 0), list(frames.shape), align_corners=False)
        frames = F.grid_sample(frames, grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)
    frames = frames.view_as(x)
    if spec.contrast:
        c = 1 + spec.contrast * (2 * draw(b) - 1)
        mean = frames.mean(dim=(2, 3, 4), keepdim=True)
        frames = (frames - mean) * c.view(b, 1, 1, 1, 1) + mean
    if spec.brightness:
        frames = frames + (spec.brightness * (2 * draw(b) - 1)).view(b, 1, 1, 1, 1)
    return frames.clamp(-1, 1)

"""Stand-in for ImageNet weights in the CPU reproduction: nothing can be downloaded, and freezing
early stages only makes sense for stages that learned something (finding 3). A backbone is
pretrained as a frame classifier on *other* synthetic videos (a different generator seed, so no
validation video is seen), with frames shuffled across videos (BatchNorm is fine there), and saved
as a timm state_dict that `model.weights` loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitfalls.data.synthetic import SyntheticOptions, make_videos
from pitfalls.models.backbone import create_backbone, feature_dim


def pretrain_backbone(out: Path, backbone: str, options: SyntheticOptions, *, steps: int = 1000,
                      batch: int = 64, lr: float = 1e-3, seed: int = 0) -> Path:
    """Train `backbone` (timm, its own BN) to classify phases of single frames; save its weights."""
    torch.manual_seed(seed)
    opts = dataclasses.replace(options, seed=options.seed + 1000, val_videos=0)
    videos, _ = make_videos(opts)
    frames = np.concatenate([np.asarray(v.frames) for v in videos])
    labels = torch.from_numpy(np.concatenate([v.phases for v in videos]))
    cnn = create_backbone(backbone)
    head = torch.nn.Linear(feature_dim(cnn), options.num_phases)
    optimizer = torch.optim.AdamW([*cnn.parameters(), *head.parameters()], lr=lr)
    rng = np.random.default_rng(seed)
    cnn.train()
    for _ in range(steps):
        idx = rng.choice(len(frames), size=batch, replace=False)
        x = torch.from_numpy(frames[idx]).movedim(-1, -3).float().div(127.5).sub(1.0)
        loss = F.cross_entropy(head(cnn(x)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cnn.state_dict(), out)
    return out

"""Stand-in for ImageNet weights in the CPU reproduction: nothing can be downloaded, and freezing
early stages only makes sense for stages that learned generic features (finding 3). A backbone is
pretrained as a frame classifier on *other* synthetic videos of several generator seeds, each seed
a different set of phase looks (like ImageNet's many classes; no validation video is seen), frames
shuffled across videos (BatchNorm is fine there), and saved as a timm state_dict that
`model.weights` loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitfalls.data.synthetic import SyntheticOptions, make_videos
from pitfalls.models.backbone import create_backbone, feature_dim
from pitfalls.models.inputs import to_input


def pretraining_frames(options: SyntheticOptions, looks: int, videos_per_look: int
                       ) -> tuple[np.ndarray, torch.Tensor]:
    """Frames and labels (phase + look x phases) of `looks` generator seeds from seed + 1000 on."""
    frames, labels = [], []
    for k in range(looks):
        # generic looks: the task's own structure (shared_looks) is not part of "ImageNet"
        opts = dataclasses.replace(options, seed=options.seed + 1000 + k, val_videos=0,
                                   num_videos=videos_per_look, shared_looks=())
        videos, _ = make_videos(opts)
        frames.append(np.concatenate([np.asarray(v.frames) for v in videos]))
        labels.append(np.concatenate([v.phases + k * options.num_phases for v in videos]))
    return np.concatenate(frames), torch.from_numpy(np.concatenate(labels))


def pretrain_backbone(out: Path, backbone: str, options: SyntheticOptions, *, looks: int = 4,
                      videos_per_look: int = 16, steps: int = 1000, batch: int = 64,
                      lr: float = 1e-3, seed: int = 0) -> Path:
    """Train `backbone` (timm, its own BN) to classify single frames; save its weights."""
    torch.manual_seed(seed)
    frames, labels = pretraining_frames(options, looks, videos_per_look)
    cnn = create_backbone(backbone)
    head = torch.nn.Linear(feature_dim(cnn), looks * options.num_phases)
    optimizer = torch.optim.AdamW([*cnn.parameters(), *head.parameters()], lr=lr)
    rng = np.random.default_rng(seed)
    cnn.train()
    for _ in range(steps):
        idx = rng.choice(len(frames), size=batch, replace=False)
        x = to_input(frames[idx], torch.device("cpu"))
        loss = F.cross_entropy(head(cnn(x)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cnn.state_dict(), out)
    return out

"""Stand-in for ImageNet weights in the CPU reproduction: nothing can be downloaded, and freezing
early stages only makes sense for stages that learned generic features (finding 3). A backbone is
pretrained as a frame classifier on *other* synthetic videos of several generator seeds, each seed
a different set of phase looks (like ImageNet's many classes; no validation video is seen), frames
shuffled across videos (BatchNorm is fine there), and saved as a timm state_dict that
`model.weights` loads (`pretrain_backbone`), or, for a timm pretrained tag, trained on inputs
normalized with that tag's mean/std and written as that tag's entry in a local Hugging Face cache
(`pretrain_standin`, `pitfalls pretrain-standin`), so `model.pretrained: true` runs offline on
a CPU. These are synthetic stand-in weights, never ImageNet ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitfalls.data.synthetic import SyntheticOptions, make_videos
from pitfalls.fileio import atomic_write
from pitfalls.models.backbone import backbone_info, create_backbone, feature_dim
from pitfalls.models.inputs import InputNorm, to_input


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


def standin_state(backbone: str, options: SyntheticOptions, *, looks: int = 4,
                  videos_per_look: int = 16, steps: int = 1000, batch: int = 64, lr: float = 1e-3,
                  seed: int = 0, normalize: bool = False, threads: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """Train `backbone` (timm, its own norms) to classify single frames; its state_dict (timm's
    layout). `normalize`: inputs normalized with the mean/std timm gives `backbone`'s tag, as a
    `pretrained: true` trial feeds them (else [-1, 1], as a `model.weights` trial does).
    `threads`: a fixed torch thread count (the split of each reduction, hence the last bits,
    follows it: a machine with more cores would otherwise train other weights)."""
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return standin_state(backbone, options, looks=looks, videos_per_look=videos_per_look,
                                 steps=steps, batch=batch, lr=lr, seed=seed, normalize=normalize)
        finally:
            torch.set_num_threads(before)
    torch.manual_seed(seed)
    frames, labels = pretraining_frames(options, looks, videos_per_look)
    cnn = create_backbone(backbone)
    head = torch.nn.Linear(feature_dim(cnn), looks * options.num_phases)
    optimizer = torch.optim.AdamW([*cnn.parameters(), *head.parameters()], lr=lr)
    scale = InputNorm(cnn.pretrained_cfg["mean"], cnn.pretrained_cfg["std"]) if normalize else None
    rng = np.random.default_rng(seed)
    cnn.train()
    for _ in range(steps):
        idx = rng.choice(len(frames), size=batch, replace=False)
        x = to_input(frames[idx], torch.device("cpu"))
        if scale is not None:
            x = scale(x)
        loss = F.cross_entropy(head(cnn(x)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return cnn.state_dict()


def pretrain_backbone(out: Path, backbone: str, options: SyntheticOptions, **train) -> Path:
    """`standin_state` saved as a state_dict file that `model.weights` loads."""
    state = standin_state(backbone, options, **train)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def save_to_hf_cache(state: dict[str, torch.Tensor], name: str, hf_home: Path) -> Path:
    """`state` as the Hugging Face cache entry timm loads tag `name`'s weights from, under
    `hf_home` (`HF_HOME`): hub/models--timm--NAME/snapshots/SHA/model.safetensors and the ref
    pointing at it (SHA: the file's SHA-1, standing in for a commit hash)."""
    import hashlib

    from huggingface_hub.file_download import repo_folder_name
    from safetensors.torch import save

    source = backbone_info(name).source
    if source is None:
        raise ValueError(f"{name} has no pretrained tag in timm to stand in for")
    filename = next((f for f in source.files if f.endswith(".safetensors")), None)
    if filename is None:
        raise ValueError(f"timm loads {name} from {source.files}, no safetensors file")
    repo, _, revision = source.hf_hub_id.partition("@")
    data = save({k: v.detach().contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    sha = hashlib.sha1(data).hexdigest()
    folder = Path(hf_home) / "hub" / repo_folder_name(repo_id=repo, repo_type="model")
    path = folder / "snapshots" / sha / filename
    ref = folder / "refs" / (revision or "main")
    for directory in (path.parent, ref.parent):
        directory.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    atomic_write(ref, sha)  # last: the entry exists once complete
    return path


def pretrain_standin(name: str, hf_home: Path, options: SyntheticOptions, **train) -> Path:
    """Synthetic stand-in weights for timm tag `name` (not ImageNet's), trained on inputs
    normalized with the tag's mean/std, written into the Hugging Face cache at `hf_home`."""
    return save_to_hf_cache(standin_state(name, options, normalize=True, **train), name, hf_home)

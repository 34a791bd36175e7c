"""Tiny study definitions for tests (small frames, few steps, the test_resnet backbone)."""

from __future__ import annotations

import copy

TINY_STUDY = {
    "name": "tiny",
    "dataset": {"name": "synthetic",
                "options": {"num_videos": 6, "val_videos": 2, "frame_size": 16,
                            "min_phase_frames": 4, "max_phase_frames": 8}},
    "task": "phase",
    "model": {"backbone": "test_resnet", "temporal_head": {"type": "lstm", "hidden_size": 16}},
    "budget": {"epochs": 2, "steps_per_epoch": 3},
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "searcher": {"type": "grid"},
    "seeds": [0],
    "metric": {"name": "val_accuracy", "mode": "max"},
    "search_space": {
        "factors": {"norm": ["batch", "group"], "frozen_stages": [1], "seq_len": [4],
                    "videos_per_batch": [2]},
        "nuisance": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2,
                            "default": 1e-3}},
    },
}


def tiny_study(**overrides) -> dict:
    """A deep copy of TINY_STUDY with top-level keys replaced."""
    study = copy.deepcopy(TINY_STUDY)
    study.update(copy.deepcopy(overrides))
    return study

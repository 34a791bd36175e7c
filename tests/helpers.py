"""Tiny study definitions for tests (small frames, few steps, the test_resnet backbone)."""

from __future__ import annotations

import copy

TINY_STUDY = {
    "name": "tiny",
    "dataset": {"name": "synthetic",
                "options": {"num_videos": 6, "val_videos": 2, "test_videos": 1, "frame_size": 16,
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


def grid_rows(values: dict[tuple, float]) -> list[dict]:
    """Result rows of a completed 2 norms x 2 frozen depths x 2 seeds grid with given finals."""
    from pitfalls.results import trial_row

    rows = []
    for i, ((norm, frozen, seed), v) in enumerate(values.items()):
        params = {"norm": norm, "frozen_stages": frozen, "seq_len": 4, "videos_per_batch": 2,
                  "lr": 1e-3, "weight_decay": 0.0, "seed": seed}
        rows.append(trial_row("s", f"t{i}", params, [{"epoch": 1, "val_accuracy": v}],
                              status="completed", error=None, duration_s=1.0, workers=1))
    return rows


GRID_VALUES = {("batch", 0, 0): 0.50, ("group", 0, 0): 0.61, ("batch", 0, 1): 0.40,
               ("group", 0, 1): 0.55, ("batch", 1, 0): 0.70, ("group", 1, 0): 0.74,
               ("batch", 1, 1): 0.30, ("group", 1, 1): 0.48}


def tiny_params(**overrides):
    """The trial parameters tests train with (tiny_study's first levels), keyword by keyword."""
    from pitfalls.config import TrialParams

    return TrialParams(**{"norm": "group", "frozen_stages": 1, "seq_len": 4, "videos_per_batch": 2,
                          "lr": 1e-3, "weight_decay": 1e-4, "seed": 0, **overrides})


def lstm_model(norm: str, frozen_stages: int = 0, num_classes: int = 4, hidden_size: int = 8,
               backbone: str = "test_resnet"):
    """A small backbone + causal LSTM head."""
    from pitfalls.models.heads import LSTMHead
    from pitfalls.models.video_model import build_model

    return build_model(backbone=backbone, norm=norm, frozen_stages=frozen_stages,
                       num_classes=num_classes, head_options=LSTMHead(hidden_size=hidden_size))

"""Guard for finding 2 (reduced): BatchNorm trained on one video per batch learns to read the
future from its batch statistics in anticipation — its error with the sequence's own statistics
is far below its error with running statistics — GroupNorm cannot, and the leakage probe tells
them apart. The reproduction's F2 study (studies/repro/f2_cheating.yaml) with fewer seeds and
epochs, trained directly (no Ray): if a change to the data generator, the model, the training
loop, the cheat gap or the probe makes the effect or its detection disappear, this fails."""

import pytest
import torch
import yaml

from pitfalls.config import TrialConfig, TrialParams, parse_study
from pitfalls.train import train
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _study(epochs: int):
    raw = yaml.safe_load((ROOT / "studies" / "repro" / "f2_cheating.yaml").read_text())
    raw["budget"]["epochs"] = epochs
    return parse_study(raw)


def _trial(spec, norm: str, seed: int) -> dict:
    params = {"norm": norm, "frozen_stages": 0, "seq_len": 16, "videos_per_batch": 1, "seed": seed,
              "lr": 1e-3, "weight_decay": 1e-4}
    torch.set_num_threads(1)
    return train(TrialConfig(spec, TrialParams.from_dict(params)))


def test_batch_norm_cheats_in_anticipation_and_the_probe_flags_it():
    spec = _study(epochs=4)
    for seed in (0, 1):
        bn = _trial(spec, "batch", seed)
        assert bn["probe_leak_train"] == 1.0, bn
        # with its own statistics BN's error on the training videos is far below its deployed error
        assert bn["train_err_batchstats"] < 0.85 * bn["train_err_runningstats"], bn
    gn = _trial(spec, "group", 0)
    assert gn["probe_leak_train"] == 0.0 and gn["probe_leak_eval"] == 0.0, gn
    assert gn["train_cheat_gap"] == 0.0 and gn["val_cheat_gap"] == 0.0, gn

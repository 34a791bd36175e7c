"""Guard for finding 2 (reduced): BatchNorm trained on one video per batch learns to read the
future from its batch statistics in anticipation — its error with the sequence's own statistics
is far below its error with running statistics — GroupNorm cannot, and the leakage probe tells
them apart. The reproduction's F2 study (studies/repro/f2_cheating.yaml) on fewer videos and
seeds, trained directly (no Ray): if a change to the data generator, the model, the training
loop, the cheat gap or the probe makes the effect or its detection disappear, this fails."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _trial(norm: str, seed: int) -> dict:
    import torch

    from pitfalls.config import TrialConfig, TrialParams, parse_study
    from pitfalls.train import train

    raw = yaml.safe_load((ROOT / "studies" / "repro" / "f2_cheating.yaml").read_text())
    raw["dataset"]["options"].update(num_videos=16, val_videos=4)
    if norm == "group":  # what is checked of GroupNorm (no leakage, a gap of exactly 0) does not
        raw["budget"] = {"epochs": 1, "steps_per_epoch": 10}  # depend on how long it trains
    params = {"norm": norm, "frozen_stages": 0, "seq_len": 16, "videos_per_batch": 1, "seed": seed,
              "lr": 1e-3, "weight_decay": 1e-4}
    torch.set_num_threads(1)
    return train(TrialConfig(parse_study(raw), TrialParams.from_dict(params)))


def test_batch_norm_cheats_in_anticipation_and_the_probe_flags_it():
    runs = [("batch", 0), ("batch", 1), ("group", 0)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = dict(zip(runs, pool.map(_trial, *zip(*runs))))
    for seed in (0, 1):
        bn = results[("batch", seed)]
        assert bn["probe_leak_train"] == 1.0, bn
        # with its own statistics BN's error on the training videos is far below its deployed error
        assert bn["train_err_batchstats"] < 0.8 * bn["train_err_runningstats"], bn
    gn = results[("group", 0)]
    assert gn["probe_leak_train"] == 0.0 and gn["probe_leak_eval"] == 0.0, gn
    assert gn["train_cheat_gap"] == 0.0 and gn["val_cheat_gap"] == 0.0, gn

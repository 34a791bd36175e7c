import numpy as np

from pitfalls.config import TrialConfig, parse_study
from pitfalls.train import train
from tests.helpers import tiny_params, tiny_study


def _cfg(norm="group", seed=0, **budget):
    raw = tiny_study(budget={"epochs": 2, "steps_per_epoch": 4, **budget})
    return TrialConfig(parse_study(raw), tiny_params(norm=norm, seed=seed))


def test_train_reports_every_epoch_with_metrics_in_range():
    reports = []
    final = train(_cfg(), report=lambda m, checkpoint: reports.append(m))
    assert [r["epoch"] for r in reports] == [1, 2] and final == reports[-1]
    for r in reports:
        assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["val_f1"] <= 1
        assert np.isfinite(r["train_loss"]) and r["train_frames_per_s"] > 0
        assert r["world_size"] == 1


def test_train_is_deterministic_per_seed():
    a, b, c = train(_cfg(seed=0)), train(_cfg(seed=0)), train(_cfg(seed=1))
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert a["train_loss"] != c["train_loss"]


def test_training_reduces_loss():
    reports = []
    train(_cfg(norm="batch", epochs=3, steps_per_epoch=15), report=lambda m, checkpoint: reports.append(m))
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]


def test_probes_and_precise_bn_as_study_options():
    raw = tiny_study(budget={"epochs": 1, "steps_per_epoch": 2},
                     evaluation={"precise_bn_batches": 2, "probes": True})
    study = parse_study(raw)
    bn = train(TrialConfig(study, tiny_params(norm="batch")))
    gn = train(TrialConfig(study, tiny_params()))
    assert bn["probe_leak_train"] == 1.0 and gn["probe_leak_train"] == 0.0
    assert "probe_stale_mean_shift" in bn and "probe_stale_mean_shift" not in gn


def test_sync_batch_with_one_worker_says_it_is_plain_bn():
    import warnings

    raw = tiny_study(budget={"epochs": 1, "steps_per_epoch": 1})
    cfg = TrialConfig(parse_study(raw), tiny_params(norm="sync_batch"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    said = [w for w in caught if "sync_batch" in str(w.message)]
    assert len(said) == 1 and "plain BatchNorm" in str(said[0].message)


def test_whitening_norms_train_end_to_end():
    import math


    for norm in ("iternorm", "swbn", "dbn"):
        raw = tiny_study(budget={"epochs": 1, "steps_per_epoch": 3})
        m = train(TrialConfig(parse_study(raw), tiny_params(norm=norm)))
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["val_loss"]), norm

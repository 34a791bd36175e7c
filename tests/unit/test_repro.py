"""The reproduction's statistics and checks, and the cheat-gap evaluation they rest on."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from pitfalls.config import PerformanceSpec
from pitfalls.data import SyntheticOptions, make_videos
from pitfalls.repro import Comparison, compare, probe_check
from pitfalls.train.cheat_gap import batch_statistics, cheat_gap_metrics, cheat_gap_records
from pitfalls.train.fast import FastPath, resolve
from pitfalls.train.tasks import PhaseTask
from tests.helpers import lstm_model


def _table(values: dict[str, list[float]]) -> pa.Table:
    rows = [{"status": "completed", "norm": norm, "seed": seed, "final_val_accuracy": v}
            for norm, vs in values.items() for seed, v in enumerate(vs)]
    return pa.Table.from_pylist(rows)


CMP = Comparison("F1", "s", "val_accuracy", {"norm": "batch"}, {"norm": "group"}, +1, "group wins")


def test_a_consistent_effect_in_the_expected_direction_holds():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, 5)
    row, = compare({"s": _table({"batch": list(base), "group": list(base + 0.1 + rng.normal(0, 0.01, 5))})}, [CMP])
    assert row["pairs"] == 5 and row["mean_diff"] == pytest.approx(0.1, abs=0.02)
    assert row["diff_ci95_low"] > 0 and row["p_t_holm"] < 0.05 and row["holds"]


def test_the_opposite_direction_or_noise_does_not_hold():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.7, 5)
    worse, = compare({"s": _table({"batch": list(base), "group": list(base - 0.1)})}, [CMP])
    noise, = compare({"s": _table({"batch": list(base), "group": list(base + rng.normal(0, 0.1, 5))})}, [CMP])
    assert not worse["holds"] and not noise["holds"]


def test_unpaired_seeds_are_left_out_and_failed_trials_ignored():
    t = _table({"batch": [0.5, 0.5, 0.5], "group": [0.6, 0.7]})
    t = t.set_column(0, "status", pa.array(["completed", "completed", "failed", "completed", "completed"]))
    row, = compare({"s": t}, [CMP])
    assert row["seeds"] == [0, 1] and row["pairs"] == 2


def test_probe_check_needs_every_bn_model_flagged_and_no_gn_model():
    def table(bn_flags, gn_flags, gn_gap=0.0):
        rows = [{"norm": "batch", "probe_leak_train": f, "final_train_cheat_gap": 0.1} for f in bn_flags]
        rows += [{"norm": "group", "probe_leak_train": f, "final_train_cheat_gap": gn_gap} for f in gn_flags]
        return pa.Table.from_pylist(rows)

    assert probe_check(table([1.0, 1.0], [0.0, 0.0]))["holds"]
    assert not probe_check(table([1.0, 0.0], [0.0, 0.0]))["holds"]
    assert not probe_check(table([1.0, 1.0], [0.0, 1.0]))["holds"]
    assert not probe_check(table([1.0, 1.0], [0.0, 0.0], gn_gap=0.01))["holds"]


def _videos():
    _, val = make_videos(SyntheticOptions(num_videos=3, val_videos=2, frame_size=16))
    return val


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_batch_statistics_mode_changes_only_batch_norm_models_and_restores_everything(norm):
    torch.manual_seed(0)
    model = lstm_model(norm, 0, 5, 64)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 8, 3, 16, 16)
    with torch.no_grad():
        running = model(x)[0]
        with batch_statistics(model):
            batch = model(x)[0]
            lstms = [m for m in model.modules() if isinstance(m, torch.nn.RNNBase)]
            assert lstms and not any(m.training for m in lstms)  # the LSTM stays in eval mode
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(batch, running) == (norm == "group")


def test_cheat_gap_is_exactly_zero_without_batch_statistics_and_nonzero_with_them():
    videos, task = _videos(), PhaseTask(5)
    fast: FastPath = resolve(PerformanceSpec(), torch.device("cpu"))
    gaps = {}
    for norm in ("batch", "group"):
        torch.manual_seed(0)
        model = lstm_model(norm, 0, 5, 64)
        batch, running = cheat_gap_records(model, videos, task, 8, torch.device("cpu"), fast, False)
        gaps[norm] = cheat_gap_metrics(task, batch, running, "val")
    assert gaps["group"]["val_cheat_gap"] == 0.0
    assert set(gaps["batch"]) == {"val_err_batchstats", "val_err_runningstats", "val_cheat_gap"}
    assert gaps["batch"]["val_err_batchstats"] != gaps["batch"]["val_err_runningstats"]


def test_chunks_cover_every_frame_and_never_leave_one_frame_alone():
    from pitfalls.train.cheat_gap import chunks

    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(9, 4) == [(0, 4), (4, 9)]  # a 1-frame chunk would break BN in train mode
    assert chunks(5, 1) == [(0, 2), (2, 5)]
    assert chunks(1, 4) == [(0, 1)]


def test_cheat_gap_on_videos_whose_length_leaves_a_single_frame():
    videos, task = _videos(), PhaseTask(5)
    seq_len = len(videos[0]) - 1  # one chunk of seq_len, then a single frame
    model = lstm_model("batch", 0, 5, 64)
    batch, running = cheat_gap_records(model, videos[:1], task, seq_len, torch.device("cpu"),
                                       resolve(PerformanceSpec(), torch.device("cpu")), False)
    assert len(batch) == len(running) == 1


def test_pretraining_sees_several_looks_and_no_study_video(tmp_path):
    from pitfalls.models.backbone import create_backbone
    from pitfalls.repro_pretrain import pretrain_backbone, pretraining_frames

    opts = SyntheticOptions(num_videos=3, val_videos=1, frame_size=16)
    frames, labels = pretraining_frames(opts, looks=2, videos_per_look=2)
    assert set(labels.tolist()) == set(range(2 * opts.num_phases))
    study_frames = np.concatenate([np.asarray(v.frames) for v in sum(make_videos(opts), [])])
    assert not any(np.array_equal(f, study_frames[0]) for f in frames)
    out = pretrain_backbone(tmp_path / "w.pt", "test_resnet", opts, looks=2, videos_per_look=2, steps=2)
    create_backbone("test_resnet", str(out))  # loads as the study's `model.weights`

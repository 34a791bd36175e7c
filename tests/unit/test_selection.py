"""Selection on validation, the one test evaluation, and the predictions a trial writes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pitfalls.config import TrialConfig, parse_study
from pitfalls.data.load import load_data
from pitfalls.train import train
from pitfalls.train.evaluation import evaluate
from pitfalls.train.loop import setup
from tests.helpers import tiny_params, tiny_study

EPOCHS = 4


def _cfg(**evaluation):
    raw = tiny_study(budget={"epochs": EPOCHS, "steps_per_epoch": 2}, evaluation=evaluation)
    raw["dataset"]["options"]["test_videos"] = 2
    return TrialConfig(parse_study(raw), tiny_params(norm="batch", frozen_stages=0))


def _train_keeping(cfg, **kw):
    """The final metrics and every epoch's checkpoint."""
    states = {}

    def report(metrics, state):
        states[metrics["epoch"]] = copy.deepcopy(state)

    return train(cfg, report=report, snapshot=True, **kw), states


def _test_metrics_of(cfg, weights) -> dict:
    run = setup(cfg, torch.device("cpu"))
    run.model.load_state_dict(weights)
    records, loss, frames = evaluate(run.model, run.data.test, run.task, run.device, run.fast)
    return {"test_loss": loss / frames, **run.task.summarize(records, "test_")}


@pytest.mark.parametrize("select", ["best", "last"])
def test_the_selected_epoch_is_the_one_evaluated_on_test(select, tmp_path):
    cfg = _cfg(select=select)
    final, states = _train_keeping(cfg, predictions=tmp_path)
    curve = [states[e]["history"][-1]["val_accuracy"] for e in range(1, EPOCHS + 1)]
    expected = 1 + int(np.argmax(curve)) if select == "best" else EPOCHS  # argmax: the earliest
    assert final["selected_epoch"] == expected
    want = _test_metrics_of(cfg, states[expected]["model"])
    assert {k: final[k] for k in want} == pytest.approx(want, nan_ok=True)
    # the checkpoint keeps the selected weights next to the last epoch's, for a redone test
    kept = states[EPOCHS]["selection"]
    assert kept["epoch"] == expected
    if select == "best":
        assert all(torch.equal(kept["weights"][k], states[expected]["model"][k]) for k in kept["weights"])


def test_a_resumed_trial_selects_and_tests_exactly_as_an_uninterrupted_one(tmp_path):
    from pitfalls.train.loop import evaluate_checkpoint

    cfg = _cfg(select="best")
    final, states = _train_keeping(cfg)
    # the test evaluation redone from the stored last checkpoint gives the same numbers
    again = evaluate_checkpoint(cfg, states[EPOCHS], predictions=tmp_path)
    assert again == {k: v for k, v in final.items() if k.startswith("test_") or k == "selected_epoch"}
    assert (tmp_path / "test" / "probabilities.parquet").is_file()
    resumed = train(cfg, resume=states[2], snapshot=True)
    timing = {"train_frames_per_s", "epoch_s"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in final.items() if k not in timing}  # test_* and selected_epoch, bit for bit


def test_the_test_split_changes_nothing_else():
    with_test = _cfg()
    raw = tiny_study(budget={"epochs": EPOCHS, "steps_per_epoch": 2})
    raw["dataset"]["options"]["test_videos"] = 0
    without = TrialConfig(parse_study(raw), tiny_params(norm="batch", frozen_stages=0))
    a, b = train(with_test), train(without)
    assert not any(k.startswith("test_") for k in b)
    shared = {k for k in b if k.startswith(("val_", "train_loss"))}
    assert {k: a[k] for k in shared} == {k: b[k] for k in shared}
    # train and validation videos are the same whether or not test videos are generated
    da, db = load_data(with_test.study.dataset), load_data(without.study.dataset)
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(da.train + da.val, db.train + db.val))
    assert {v.id for v in da.test}.isdisjoint({v.id for v in da.train + da.val})


def test_predictions_are_the_selected_checkpoint_in_cholec80_format(tmp_path):
    cfg = _cfg(select="best")
    final = train(cfg, predictions=tmp_path)
    data = load_data(cfg.study.dataset)
    for split, videos in (("val", data.val), ("test", data.test)):
        table = pq.read_table(tmp_path / split / "probabilities.parquet")
        assert table.num_rows == sum(len(v) for v in videos)
        assert table.schema.metadata[b"pitfalls.protocol"] == b"matlab"
        probs = np.stack([table[f"p_{n}"].to_numpy() for n in data.phase_names], axis=1)
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert np.array_equal(probs.argmax(axis=1), table["prediction"].to_numpy())
        for v in videos:
            lines = (tmp_path / split / f"{v.id}-phase.txt").read_text().splitlines()
            assert lines[0] == "Frame\tPhase" and len(lines) == len(v) + 1
            assert [int(x.split("\t")[0]) for x in lines[1:]] == list(range(len(v)))
            assert all(x.split("\t")[1] in data.phase_names for x in lines[1:])
    # the truth column is the dataset's labels; scoring the files again gives the logged numbers
    from pitfalls.results.phases import read_predictions, videos_of
    from pitfalls.scoring.protocols import evaluate_videos

    table = read_predictions(tmp_path.parent, tmp_path.name, "test")
    ev = evaluate_videos([(g, p) for _, g, p in videos_of(table)], len(data.phase_names), 1.0, "matlab")
    for k, v in ev.metrics().items():
        assert final[f"test_{k}"] == pytest.approx(v, nan_ok=True), k
    scores = json.loads((tmp_path / "test" / "scores.json").read_text())
    assert scores["relaxed"]["accuracy"]["mean"] == pytest.approx(final["test_relaxed_accuracy"])
    assert list(scores["strict"]["per_phase"]) == list(data.phase_names)


def test_without_a_test_split_nothing_is_tested_and_predictions_can_be_off(tmp_path):
    raw = tiny_study(budget={"epochs": 1, "steps_per_epoch": 1}, evaluation={"predictions": False})
    raw["dataset"]["options"]["test_videos"] = 0
    final = train(TrialConfig(parse_study(raw), tiny_params()), predictions=tmp_path)
    assert final["selected_epoch"] == 1 and not any(k.startswith("test_") for k in final)
    assert not any(tmp_path.iterdir())

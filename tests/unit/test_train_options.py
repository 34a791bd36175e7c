"""Carried hidden state, augmentation and the anticipation task in the training loop."""

import numpy as np
import pytest
import torch

from pitfalls.config import AugmentSpec, TrialConfig, parse_study
from pitfalls.models.temporal import Lanes
from pitfalls.train import train
from pitfalls.train.augment import augment
from tests.helpers import tiny_params, tiny_study


def test_reset_lanes_zeroes_new_videos_and_detaches_the_rest():
    h = torch.ones(1, 3, 2, requires_grad=True) * 2
    c = torch.ones(1, 3, 2, requires_grad=True) * 3
    nh, nc = Lanes(dim=1).reset((h, c), np.array([False, True, False]), torch.device("cpu"))
    assert not nh.requires_grad and not nc.requires_grad
    assert nh[0, 1].abs().sum() == 0 and nc[0, 1].abs().sum() == 0
    assert torch.equal(nh[0, 0], h[0, 0].detach()) and torch.equal(nc[0, 2], c[0, 2].detach())
    assert Lanes(dim=1).reset(None, np.array([True]), torch.device("cpu")) is None


def test_augmentation_is_one_draw_per_sequence_and_off_by_default():
    frame = torch.rand(1, 1, 3, 16, 16) * 2 - 1
    x = torch.cat([frame.expand(1, 5, 3, 16, 16), -frame.expand(1, 5, 3, 16, 16)])  # 2 sequences
    assert augment(x, AugmentSpec(), torch.Generator().manual_seed(0)) is x
    spec = AugmentSpec(hflip=0.5, min_crop=0.6, brightness=0.2, contrast=0.3)
    y = augment(x, spec, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    for b in range(2):  # identical frames stay identical: the same transform for the whole sequence
        assert torch.allclose(y[b], y[b, :1].expand_as(y[b]), atol=1e-6)
    assert not torch.allclose(y, x)
    again = augment(x, spec, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)  # reproducible from the trial's seed


def test_flip_only_mirrors_exactly():
    x = torch.rand(1, 2, 3, 8, 8)
    y = augment(x, AugmentSpec(hflip=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(y, x.flip(-1), atol=1e-5)


def _study(**overrides):
    return parse_study(tiny_study(**{"budget": {"epochs": 1, "steps_per_epoch": 4}, **overrides}))


def test_carried_state_training_runs_and_differs_from_shuffled_windows():
    study = _study()
    shuffled = train(TrialConfig(study, tiny_params()))
    carried = train(TrialConfig(study, tiny_params(carry_hidden=True)))
    assert np.isfinite(carried["train_loss"]) and 0 <= carried["val_accuracy"] <= 1
    assert carried["train_loss"] != shuffled["train_loss"]


def test_carried_state_reaches_the_next_chunk(monkeypatch):
    """The LSTM gets the previous chunk's state, except where a lane starts a new video."""
    from pitfalls.models.temporal import CausalLSTMHead

    seen = []
    original = CausalLSTMHead.forward

    def spy(self, feats, state=None):
        if torch.is_grad_enabled():  # training steps only
            seen.append(None if state is None else state[0].abs().sum(-1).squeeze(0).tolist())
        return original(self, feats, state)

    monkeypatch.setattr(CausalLSTMHead, "forward", spy)
    study = _study(budget={"epochs": 1, "steps_per_epoch": 6})
    train(TrialConfig(study, tiny_params(carry_hidden=True)))
    assert seen[0] is None and all(s is not None for s in seen[1:])
    assert any(all(v > 0 for v in s) for s in seen[1:])  # a state was carried on every lane


def test_anticipation_trains_and_reports_minutes():
    study = _study(task={"name": "anticipation", "horizon": 0.25}, metric={})
    assert study.metric.name == "val_wMAE" and study.metric.mode == "min"
    m = train(TrialConfig(study, tiny_params()))
    for k in ("val_wMAE", "val_inMAE", "val_outMAE"):
        assert 0 <= m[k] <= 0.25  # errors in minutes cannot exceed the horizon
    assert "val_accuracy" not in m


@pytest.mark.parametrize("overrides, expected", [
    ({"task": {"name": "anticipation", "tools": ["scalpel"]}, "metric": {}}, "task.tools[0]: 'scalpel' is not an instrument"),
    ({"task": {"name": "anticipation"}, "metric": {"name": "val_accuracy"}}, "is not a metric of task anticipation"),
    ({"metric": {"name": "val_loss", "mode": "max"}}, "val_loss is better when lower: use mode min"),
    ({"task": {"name": "phase", "horizon": 2}}, "task.horizon: 2 applies to task anticipation only"),
    ({"augmentation": {"hflip": 2.0}}, "augmentation.hflip: 2.0 is a probability"),
])
def test_task_metric_and_augmentation_errors(overrides, expected):
    from pitfalls.config import StudyError

    with pytest.raises(StudyError, match="problem") as e:
        parse_study(tiny_study(**overrides))
    assert expected in str(e.value)


def test_carry_hidden_is_a_boolean_factor():
    from pitfalls.config import StudyError

    raw = tiny_study()
    raw["search_space"]["factors"]["carry_hidden"] = [False, True]
    spec = parse_study(raw)
    assert "carry_hidden" in spec.search_space.varied_factors and spec.num_trials == 4
    assert parse_study(spec.to_dict()) == spec
    raw["search_space"]["factors"]["carry_hidden"] = ["yes"]
    with pytest.raises(StudyError, match=r"carry_hidden\[0\]: 'yes' must be true or false"):
        parse_study(raw)


def test_real_dataset_options_round_trip_and_are_checked():
    from pitfalls.config import StudyError

    raw = tiny_study(dataset={"name": "frames", "options": {
        "root": "/data/x", "labels": "l.parquet", "tool_columns": ["a", "b"],
        "split": {"train": ["v1", "v2"], "val": ["v3"]}, "frame_size": [32, 24]}})
    spec = parse_study(raw, check_environment=False)
    assert spec.dataset.options.split == (("train", ("v1", "v2")), ("val", ("v3",)))
    assert parse_study(spec.to_dict(), check_environment=False) == spec
    bad = tiny_study(dataset={"name": "cholec80", "options": {"split": "50/50", "frame_size": [3],
                                                               "colour": True}})
    with pytest.raises(StudyError) as e:
        parse_study(bad, check_environment=False)
    msg = str(e.value)
    for part in ("dataset.options.root: None is required", "dataset.options.split: '50/50' is not a split; valid: 40/8/32, 32/8/40",
                 "dataset.options.frame_size: [3] must be [width, height]", "dataset.options.colour"):
        assert part in msg


@pytest.mark.parametrize("carry, norm, head", [(False, "batch", "lstm"), (True, "group", "lstm"),
                                              (True, "group", "tcn")])
def test_resuming_from_a_snapshot_continues_exactly(carry, norm, head):
    """Stop after epoch 2 of 3, resume from the snapshot: the same numbers as one straight run
    (the TCN: its carried state of past frames and its dropout draws included)."""
    import copy
    import io

    model = {} if head == "lstm" else {"model": {"backbone": "test_resnet", "temporal_head": {"type": head}}}
    study = _study(budget={"epochs": 3, "steps_per_epoch": 3}, augmentation={"hflip": 0.5, "min_crop": 0.8},
                   evaluation={"precise_bn_batches": 1}, **model)
    cfg = TrialConfig(study, tiny_params(norm=norm, carry_hidden=carry))
    straight = []
    train(cfg, report=lambda m, s: straight.append(m), snapshot=True)

    states = []

    class Stop(Exception):
        pass

    def stop_after_two(m, s):
        buf = io.BytesIO()
        torch.save(s, buf)  # a checkpoint is a torch file: the state must survive it
        states.append(buf.getvalue())
        if m["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, report=stop_after_two, snapshot=True)
    resumed = []
    state = torch.load(io.BytesIO(states[-1]), weights_only=True)
    final = train(cfg, report=lambda m, s: resumed.append((m, s)), resume=copy.deepcopy(state), snapshot=True)
    assert [m["epoch"] for m, _ in resumed] == [3]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert final[key] == straight[-1][key]
    assert [h["epoch"] for h in resumed[-1][1]["history"]] == [1, 2, 3]

"""The training modes (`training`: end_to_end, frame_only, two_stage): what each trains on, how
it records itself, resuming anywhere (between a two-stage trial's stages included), the stored
features, and what validation refuses."""

import copy

import numpy as np
import pyarrow.fs
import pytest
import torch

from pitfalls.config import StudyError, TrialConfig, parse_study
from pitfalls.data.sampler import FrameSampler, VideoSampler
from pitfalls.models.frame_head import FrameClassifier
from pitfalls.train import train
from pitfalls.train.features import DirectoryFeatures
from tests.helpers import TINY_STUDY, tiny_params, tiny_study


def _study(mode: str | list, budget=None, **extra):
    space = copy.deepcopy(TINY_STUDY["search_space"])
    space["factors"]["training"] = mode if isinstance(mode, list) else [mode]
    return tiny_study(search_space=space, budget=budget or {"epochs": 2, "steps_per_epoch": 3},
                      **extra)


def _cfg(mode: str, budget=None, **params):
    return TrialConfig(parse_study(_study(mode, budget)), tiny_params(training=mode, **params))


def _run(cfg, **kwargs):
    reports, states = [], []
    final = train(cfg, report=lambda m, s: (reports.append(m), states.append(copy.deepcopy(s))),
                  snapshot=True, **kwargs)
    return final, reports, states


def _same(a: dict, b: dict) -> list[str]:
    """Keys whose values differ (timings aside)."""
    timing = ("epoch_s", "train_frames_per_s", "feature_extraction_s")
    return [k for k in a if k not in timing and isinstance(a[k], float)
            and not (a[k] == b.get(k) or (np.isnan(a[k]) and np.isnan(b.get(k, 0.0))))]


def test_frame_sampler_draws_distinct_frames_across_videos_and_restores():
    lengths = [10, 3, 7]
    s = FrameSampler(lengths, 8, np.random.default_rng(0))
    picks = [s.sample() for _ in range(50)]
    for batch in picks:
        assert len(set(batch)) == 8 and all(0 <= f < lengths[v] for v, f in batch)
    assert {v for batch in picks for v, _ in batch} == {0, 1, 2}
    state = s.state_dict()
    again = FrameSampler(lengths, 8, np.random.default_rng(1))
    again.load_state_dict(state)
    assert again.sample() == s.sample()
    with pytest.raises(ValueError, match="hold 20"):
        FrameSampler(lengths, 30, np.random.default_rng(0))
    videos = VideoSampler(5, 3, np.random.default_rng(0))
    assert all(len(set(videos.sample())) == 3 for _ in range(20))


def test_frame_only_trains_a_frame_classifier_on_single_frames_and_has_no_temporal_head(monkeypatch):
    from pitfalls.train import loop

    cfg = _cfg("frame_only", norm="batch")
    assert cfg.params.temporal_head is None and cfg.epochs == 2
    assert cfg.study.recorded_params({"training": "frame_only", "norm": "batch", "frozen_stages": 1,
                                      "seq_len": 4, "videos_per_batch": 2, "seed": 0})["temporal_head"] is None
    shapes = []
    step = loop.Stepper.step

    def spy(self, x, labels, state):
        shapes.append(tuple(x.shape[:2]))
        return step(self, x, labels, state)

    monkeypatch.setattr(loop.Stepper, "step", spy)
    run = loop.setup(cfg, torch.device("cpu"))
    assert isinstance(run.model.head, FrameClassifier)
    final = train(cfg)
    # videos_per_batch x seq_len = 8 frames per step, each a sequence of one frame
    assert set(shapes) == {(8, 1)} and 0 <= final["test_accuracy"] <= 1


@pytest.mark.parametrize("mode,head", [("frame_only", None), ("two_stage", "lstm"),
                                       ("two_stage", "tcn")])
def test_a_trial_resumes_bit_for_bit_from_every_checkpoint(mode, head):
    budget = {"epochs": 2, "steps_per_epoch": 3}
    if mode == "two_stage":
        budget.update(cnn_epochs=2, cnn_steps_per_epoch=2)
    raw = _study(mode, budget)
    raw["model"]["temporal_head"] = [{"type": "lstm", "hidden_size": 16},
                                     {"type": "tcn", "layers": 3, "feature_maps": 8}]
    cfg = TrialConfig(parse_study(raw), tiny_params(training=mode, norm="batch", temporal_head=head))
    assert cfg.params.temporal_head == head
    final, reports, states = _run(cfg)
    if mode == "two_stage":  # stage 1 then stage 2, numbered on
        assert [(r["epoch"], r["stage"]) for r in reports] == [(1, 1), (2, 1), (3, 2), (4, 2)]
        assert 3 <= final["selected_epoch"] <= 4  # selected among the head's epochs
    for state in states[:-1]:  # states[1]: between the stages
        resumed, _, _ = _run(cfg, resume=copy.deepcopy(state))
        assert _same(final, resumed) == [], state["epoch"]


def test_two_stage_stores_features_once_and_reads_them_back(tmp_path, monkeypatch):
    from pitfalls.train import two_stage

    cfg = _cfg("two_stage", {"epochs": 1, "steps_per_epoch": 2, "cnn_epochs": 1})
    store = DirectoryFeatures(pyarrow.fs.LocalFileSystem(), str(tmp_path / "features"))
    calls = []
    extract = two_stage.extract
    monkeypatch.setattr(two_stage, "extract", lambda *a: calls.append(a[1].id) or extract(*a))
    final, reports, states = _run(cfg, features=store)
    videos = cfg.study.dataset.options.num_videos + cfg.study.dataset.options.test_videos
    assert len(calls) == videos and "feature_extraction_s" in reports[-1]
    (key,) = [p.name for p in (tmp_path / "features").iterdir()]
    assert sorted(p.name for p in (tmp_path / "features" / key).iterdir()) == ["test", "train", "val"]
    calls.clear()
    resumed, again, _ = _run(cfg, features=store, resume=copy.deepcopy(states[0]))  # between stages
    assert calls == [] and "feature_extraction_s" not in again[-1]
    assert _same(final, resumed) == []
    # another CNN (here: other weights) never reads them, and replaces them
    other = _cfg("two_stage", {"epochs": 1, "steps_per_epoch": 2, "cnn_epochs": 1}, seed=1)
    _run(other, features=store)
    assert len(calls) == videos and [p.name for p in (tmp_path / "features").iterdir()] != [key]


@pytest.mark.parametrize("change,field,says", [
    ({"training": ["frame_only"], "carry_hidden": [True]}, "search_space.factors.carry_hidden[0]",
     "single frames"),
    ({"training": ["end_to_end", "frame_only"], "temporal_head": ["lstm", "gru"]},
     "search_space.factors.training", "same trial 2 times"),
    ({"pipeline": [{"training": "end_to_end", "temporal_head": "gru"},
                  {"training": "frame_only", "temporal_head": "lstm"}]},
     "search_space.factors.pipeline[1].temporal_head", "set temporal_head: null"),
    ({"training": ["two_stage"]}, "search_space.factors.training[0]", "resources.workers is 2"),
])
def test_validation_refuses_what_a_mode_rules_out(change, field, says):
    raw = tiny_study()
    raw["search_space"]["factors"].update(change)
    raw["model"]["temporal_head"] = [{"type": "lstm"}, {"type": "gru"}]
    if "two_stage" in str(change):
        raw["resources"] = {"workers": 2, "cpus_per_worker": 1}
    with pytest.raises(StudyError) as e:
        parse_study(raw)
    line = next(x for x in str(e.value).splitlines() if x.strip().startswith(f"- {field}"))
    assert says in line


def test_the_first_stage_budget_belongs_to_two_stage_studies():
    with pytest.raises(StudyError, match="budget.cnn_epochs: 3 is the budget of a two-stage"):
        parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 1, "cnn_epochs": 3}))
    spec = parse_study(_study(["end_to_end", "two_stage"],
                              {"epochs": 2, "steps_per_epoch": 1, "cnn_epochs": 3}))
    assert spec.budget.total_epochs("two_stage") == 5 and spec.budget.total_epochs("end_to_end") == 2


def test_plan_costs_each_mode_as_it_trains():
    """frame_only is measured with the frame classifier; a two-stage configuration adds the
    feature extraction and the head's stage on stored features, and holds the features."""
    from pitfalls.plan import plan_study

    raw = _study(["frame_only", "two_stage"], {"epochs": 2, "steps_per_epoch": 3, "cnn_epochs": 2})
    raw["search_space"]["factors"]["norm"] = ["group"]
    plan = plan_study(parse_study(raw), torch.device("cpu"))
    by_mode = {c.params["training"]: c for c in plan.configs}
    assert by_mode["frame_only"].params["temporal_head"] is None
    assert by_mode["two_stage"].params["temporal_head"] == "lstm"
    frames = sum(sum(v) for v in plan.lengths.values())
    assert plan.all_frames == frames > 0
    shapes = {key[-1]: cost for key, cost in plan.shapes.items()}  # keyed by training last
    extraction = shapes["two_stage"].eval_s_per_frame * frames
    # same CNN stage, plus the extraction and the head's stage
    assert by_mode["two_stage"].trial_s > extraction
    from pitfalls.models.backbone import backbone_info

    features = frames * backbone_info("test_resnet").num_features * 4  # float32, on the device
    assert by_mode["two_stage"].train_peak_bytes > features > 0
    assert by_mode["frame_only"].train_peak_bytes == plan.shapes[next(
        k for k in plan.shapes if k[-1] == "frame_only")].peak_bytes(by_mode["frame_only"].frames_per_micro_step)

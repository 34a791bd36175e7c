"""The seeds' optimization details as trial parameters: median-frequency class weights, SGD and
timm's adaptive gradient clipping (pitfalls.train.tasks, pitfalls.train.optim)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pitfalls.config import StudyError, TrialConfig, TrialParams, parse_study
from pitfalls.data.base import Video
from pitfalls.fields import choices_of
from pitfalls.train import train
from pitfalls.train.tasks import CLASS_WEIGHTINGS, PhaseTask, median_frequency_weights, training_loss
from tests.helpers import lstm_model, tiny_params, tiny_study

CPU = torch.device("cpu")


def _video(phases) -> Video:
    return Video("v", None, np.asarray(phases, dtype=np.int64), np.zeros((len(phases), 0), np.uint8))


# ---------------------------------------------------------------------------------------------
# Class weights


def test_median_frequency_weights_by_hand():
    # counts 5, 3, 1, 0 of 9 frames: median of the present frequencies 3/9
    w = median_frequency_weights([np.array([0, 0, 0, 0, 1, 1, 2]), np.array([0, 1])], 4)
    np.testing.assert_allclose(w, [0.6, 1.0, 3.0, 0.0])  # the absent class: 0, never inf
    # an even number of present classes: the median is the mean of the middle two (2/8, 6/8)
    np.testing.assert_allclose(median_frequency_weights([np.array([0, 0, 1, 1, 1, 1, 1, 1])], 2),
                               [2.0, 2 / 3])


def test_the_weighted_training_loss_is_torchs_weighted_cross_entropy_and_none_is_the_task_loss():
    task = PhaseTask(4)
    videos = [_video([0, 0, 0, 0, 1, 1, 2]), _video([0, 1])]
    assert training_loss(task, "none", videos, CPU) == task.loss
    loss = training_loss(task, "median_frequency", videos, CPU)
    out, y = torch.randn(2, 5, 4), torch.randint(0, 3, (2, 5))
    expected = F.cross_entropy(out.reshape(10, 4), y.reshape(10),
                               weight=torch.tensor([0.6, 1.0, 3.0, 0.0]))
    torch.testing.assert_close(loss(out, (y,)), expected)
    assert not torch.equal(loss(out, (y,)), task.loss(out, (y,)))  # evaluation stays unweighted


def test_a_trial_weighs_its_training_loss_only_by_its_training_split():
    from pitfalls.train.loop import setup

    study = parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 2}))
    run = setup(TrialConfig(study, tiny_params(class_weights="median_frequency")), CPU)
    weight = run.stepper.loss_fn.keywords["weight"]
    expected = median_frequency_weights([v.phases for v in run.data.train], run.task.num_classes)
    torch.testing.assert_close(weight, torch.tensor(expected, dtype=torch.float32))
    assert run.stepper.loss_fn.func == run.task.loss  # what evaluate() uses, unweighted


def test_the_defaults_train_bit_identically_to_the_construction_before_these_options(monkeypatch):
    """AdamW(lr, weight_decay) on the trainable parameters and the task's own loss, as setup
    built them before: the default options, given or absent, train the same numbers."""
    import pitfalls.train.loop as loop

    study = parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 3}))
    absent = train(TrialConfig(study, tiny_params(norm="batch")))
    given = train(TrialConfig(study, tiny_params(norm="batch", optimizer="adamw", agc_clip=0.0,
                                                 class_weights="none", momentum=0.5)))
    monkeypatch.setattr(loop, "make_optimizer", lambda model, s: torch.optim.AdamW(
        [q for q in model.parameters() if q.requires_grad], lr=s["lr"], weight_decay=s["weight_decay"]))
    monkeypatch.setattr(loop, "training_loss", lambda task, *args: task.loss)
    before = train(TrialConfig(study, tiny_params(norm="batch")))
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert absent[key] == given[key] == before[key], key


def test_median_frequency_weights_change_the_training_but_not_what_val_loss_measures():
    study = parse_study(tiny_study(budget={"epochs": 1, "steps_per_epoch": 3}))
    plain = train(TrialConfig(study, tiny_params()))
    weighted = train(TrialConfig(study, tiny_params(class_weights="median_frequency")))
    assert weighted["train_loss"] != plain["train_loss"]
    assert np.isfinite(weighted["val_loss"])


# ---------------------------------------------------------------------------------------------
# SGD and adaptive gradient clipping


def _agc(w: torch.Tensor, g: torch.Tensor, factor: float) -> torch.Tensor:
    """AGC by the paper (Brock et al. 2021): per output unit, the gradient's norm is capped at
    factor x max(the weight's norm, 1e-3)."""
    dims = tuple(range(1, w.ndim)) or None  # a weight's output units; a bias or gain as one
    wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
    gn = torch.linalg.vector_norm(g, dim=dims, keepdim=True)
    limit = wn.clamp(min=1e-3) * factor
    return torch.where(gn > limit, g * (limit / gn), g)


def _one_step(model, optimizer, scaler=None):
    from pitfalls.config import PerformanceSpec
    from pitfalls.models.inputs import to_input
    from pitfalls.train.fast import Stepper, resolve

    stepper = Stepper(model, optimizer, PhaseTask(4).loss, resolve(PerformanceSpec(), CPU))
    if scaler is not None:
        stepper.scaler = scaler
    rng = np.random.default_rng(0)
    x = to_input(rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8), CPU)
    stepper.step(x, (torch.from_numpy(rng.integers(0, 4, (2, 4))),), None)


@pytest.mark.parametrize("scaled", [False, True])
def test_sgd_with_agc_clips_the_backbone_as_the_paper_says_after_unscaling_and_never_the_head(scaled):
    from pitfalls.train.optim import make_optimizer

    factor, lr = 0.01, 0.5
    torch.manual_seed(0)
    model = lstm_model("group", num_classes=4)
    reference = copy.deepcopy(model)
    _one_step(reference, torch.optim.SGD(reference.parameters(), lr=0.0))  # the raw gradients
    settings = {"optimizer": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "agc_clip": factor}
    # loss scaling by 2^10 is exact: the clipped gradients are the same iff AGC sees them unscaled
    _one_step(model, make_optimizer(model, settings),
              torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaled else None)
    backbone = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    clipped = head_would_clip = 0
    for (name, q), r in zip(model.named_parameters(), reference.parameters(), strict=True):
        if name in backbone:
            want = _agc(r.detach(), r.grad, factor)
            clipped += not torch.equal(want, r.grad)
        else:
            want = r.grad
            head_would_clip += not torch.equal(_agc(r.detach(), r.grad, factor), r.grad)
            assert torch.equal(q.grad, r.grad), name  # the head is not clipped
        torch.testing.assert_close(q.grad, want, msg=name)
        torch.testing.assert_close(q.detach(), r.detach() - lr * want, msg=name)
    assert clipped and head_would_clip  # both sides of the test have teeth


def test_sgd_uses_nesterov_momentum_and_plain_sgd_at_zero():
    from pitfalls.train.optim import make_optimizer

    model = lstm_model("group")
    base = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "agc_clip": 0.0}
    sgd = make_optimizer(model, {**base, "momentum": 0.9})
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert not make_optimizer(model, {**base, "momentum": 0.0}).defaults["nesterov"]
    adamw = make_optimizer(model, {**base, "optimizer": "adamw", "momentum": 0.9})
    assert isinstance(adamw, torch.optim.AdamW) and not adamw._optimizer_step_pre_hooks


def test_the_optimizers_and_weightings_are_the_declared_levels():
    from pitfalls.train.optim import OPTIMIZERS

    assert tuple(OPTIMIZERS) == choices_of(TrialParams, "optimizer")
    assert ("none", *CLASS_WEIGHTINGS) == choices_of(TrialParams, "class_weights")


def test_a_trial_with_sgd_and_agc_resumes_bit_for_bit():
    """Stop after epoch 1 of 2, resume from the snapshot: the same numbers as one straight run
    (SGD's momentum buffers are in the checkpoint; the clipping hook is set up again)."""
    study = parse_study(tiny_study(budget={"epochs": 2, "steps_per_epoch": 3}))
    cfg = TrialConfig(study, tiny_params(norm="batch", optimizer="sgd", lr=0.05, agc_clip=0.05))
    straight = train(cfg)

    class Stop(Exception):
        pass

    saved = []

    def stop_after_two(m, s):
        buf = io.BytesIO()
        torch.save(s, buf)
        saved.append(buf.getvalue())
        if m["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, report=stop_after_two, snapshot=True)
    state = torch.load(io.BytesIO(saved[-1]), weights_only=True)
    assert any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    resumed = train(cfg, resume=state)
    assert resumed["epoch"] == 2
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert resumed[key] == straight[key], key


def test_the_planner_counts_the_optimizers_own_state():
    from pitfalls.plan import _planning_fast_path, _Trainer, shape_params

    spec = parse_study(tiny_study())
    fast = _planning_fast_path(spec, CPU)
    sizes = {}
    for name in ("adamw", "sgd"):
        trainer = _Trainer(spec, "group", 1, CPU, fast, optimizer=name)
        weights = sum(q.numel() * q.element_size() for q in trainer.model.parameters())
        trainable = sum(q.numel() * q.element_size() for q in trainer.model.parameters() if q.requires_grad)
        trainer.step(2)
        sizes[name] = (trainer.resident - weights) / trainable
    assert sizes["sgd"] == 1.0 and 2.0 <= sizes["adamw"] < 2.01  # momentum; two moments (+ steps)
    raw = tiny_study()
    raw["search_space"]["factors"]["optimizer"] = ["adamw", "sgd"]
    assert "optimizer" in shape_params(parse_study(raw)) and "optimizer" not in shape_params(spec)


# ---------------------------------------------------------------------------------------------
# Validation and results


def _problems(factors=None, nuisance=None, **overrides) -> list[str]:
    raw = tiny_study(**overrides)
    raw["search_space"]["factors"].update(factors or {})
    raw["search_space"]["nuisance"].update(nuisance or {})
    with pytest.raises(StudyError) as e:
        parse_study(raw)
    return e.value.problems


@pytest.mark.parametrize("factors, nuisance, overrides, expected", [
    ({"optimizer": ["rmsprop"]}, None, {},
     "search_space.factors.optimizer[0]: 'rmsprop' is not a known optimizer; valid choices: adamw, sgd"),
    ({"optimizer": ["sgd"], "momentum": [1.0]}, None, {}, "search_space.factors.momentum[0]: 1.0 must be < 1"),
    ({"agc_clip": [-0.01]}, None, {}, "search_space.factors.agc_clip[0]: -0.01 must be >= 0"),
    ({"class_weights": ["inverse"]}, None, {}, "search_space.factors.class_weights[0]: 'inverse' is not a "
     "known class weighting; valid choices: none, median_frequency"),
    ({"momentum": [0.5, 0.9]}, None, {}, "search_space.factors.momentum: [0.5, 0.9] is SGD's momentum, "
     "but the trials it reaches train with adamw"),
    ({"recipe": [{"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "adamw", "momentum": 0.5}]}, None, {},
     "search_space.factors.recipe[1].momentum: 0.5 is SGD's momentum, but the trials it reaches train with adamw"),
    (None, {"momentum": {"distribution": "uniform", "low": 0.5, "high": 0.99, "default": 0.9}}, {},
     "search_space.nuisance.momentum: 'momentum' is SGD's momentum; no trial of this study trains with "
     "optimizer sgd"),
    ({"class_weights": ["none", "median_frequency"]}, None,
     {"task": {"name": "anticipation"}, "metric": {}},
     "search_space.factors.class_weights[1]: 'median_frequency' weighs phase classes; task anticipation "
     "has none"),
])
def test_bad_optimization_options_are_refused_with_one_clear_problem(factors, nuisance, overrides, expected):
    problems = _problems(factors, nuisance, **overrides)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_meaningful_optimization_options_validate_and_round_trip():
    from pitfalls.config.params import parse_param

    raw = tiny_study()
    raw["search_space"]["factors"].update({"optimizer": ["adamw", "sgd"], "momentum": [0.0, 0.9],
                                           "agc_clip": [0.0, 0.01],
                                           "class_weights": ["none", "median_frequency"]})
    raw["search_space"]["nuisance"]["weight_decay"] = {"distribution": "loguniform", "low": 1e-6,
                                                       "high": 1e-3, "default": 1e-5}
    spec = parse_study(raw)
    assert spec.num_trials == 2 * 2 * 2 * 2 * 2 and parse_study(spec.to_dict()) == spec
    params = spec.trial_params({"norm": "batch", "frozen_stages": 1, "seq_len": 4, "videos_per_batch": 2,
                                "optimizer": "sgd", "momentum": 0.0, "agc_clip": 0.01,
                                "class_weights": "median_frequency", "lr": 1e-3, "seed": 0})
    assert params.for_target("optimizer") == {"lr": 1e-3, "weight_decay": 1e-4, "optimizer": "sgd",
                                              "momentum": 0.0, "agc_clip": 0.01}
    mlflow = {k: parse_param(k, str(v)) for k, v in params.as_dict().items()}  # params as strings
    assert TrialParams.from_dict(mlflow) == params


def test_results_written_before_the_options_read_back_as_adamw_unweighted_unclipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pitfalls.results import read_results, trial_row
    from pitfalls.results.schema import SCHEMA

    params = {"norm": "batch", "frozen_stages": 0, "seq_len": 4, "videos_per_batch": 2, "lr": 1e-3,
              "weight_decay": 0.0, "seed": 0}
    row = trial_row("s", "t0", params, [{"epoch": 1, "val_accuracy": 0.5}], status="completed",
                    error=None, duration_s=1.0, workers=1)
    new = ["optimizer", "momentum", "agc_clip", "class_weights"]
    old = pa.Table.from_pylist([row], schema=SCHEMA).drop_columns(new)
    pq.write_table(old.replace_schema_metadata({"pitfalls.schema_version": "6"}), tmp_path / "v6.parquet")
    t = read_results(tmp_path / "v6.parquet")
    assert t.schema.equals(SCHEMA)
    assert [t[c].to_pylist() for c in new] == [["adamw"], [None], [0.0], ["none"]]

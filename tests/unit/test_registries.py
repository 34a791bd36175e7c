"""One place per extension point: each registry agrees with what the code computes and builds,
and no list of registered names is written a second time anywhere in the package."""

from __future__ import annotations

import ast
import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from pitfalls.config import TrialConfig, parse_study
from pitfalls.config.metrics import (
    AFTER_TRAINING_METRICS,
    METRICS,
    RESULT_METRICS,
    TASKS,
    default_metric,
    names,
    selection_metric,
    task_metrics,
)
from pitfalls.config.params import CORE_FACTORS, PARAMS, TrialParams
from pitfalls.config.spec import TaskSpec
from pitfalls.data.base import Video
from pitfalls.fields import choices_of, field_types
from pitfalls.models.heads import HEADS
from pitfalls.models.norms import NORMS, NormOptions
from pitfalls.probes.registry import COLUMNS, PROBES
from pitfalls.results.schema import PARAM_NAMES, SCHEMA, SCHEMA_VERSION
from pitfalls.results.schema import PROBES as SCHEMA_PROBES
from pitfalls.train.tasks import PhaseTask
from tests.conftest import ROOT
from tests.helpers import lstm_model, tiny_params, tiny_study

# The results schema's columns, per version: a change to a parameter, metric or probe changes
# the schema; bump SCHEMA_VERSION (results/schema.py) and record the new fingerprint here.
SCHEMA_FINGERPRINTS = {"5": "ce15345858ff50d5", "6": "2a280b1656462bde", "7": "cad9100bab25b54c",
                       "8": "9128a83f105debdb"}


def test_results_schema_is_versioned_with_its_columns():
    text = ";".join(f"{f.name}:{f.type}" for f in SCHEMA)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert SCHEMA_FINGERPRINTS.get(SCHEMA_VERSION) == fingerprint, (
        f"the results schema changed ({fingerprint}): bump SCHEMA_VERSION and record it here")


# ---------------------------------------------------------------------------------------------
# Metrics


def test_tasks_and_metrics_agree():
    assert choices_of(TaskSpec, "name") == TASKS
    assert all(m.task in (*TASKS, None) and m.split in ("val", "train", "test") for m in METRICS.values())
    for task in TASKS:
        assert default_metric(task) in task_metrics(task)
    once = {n for n in AFTER_TRAINING_METRICS if METRICS[n].split != "test"}  # the cheat gap
    assert not once & {m for t in TASKS for m in task_metrics(t)}
    # every test metric is its validation metric measured once: same task, same direction
    for n, m in METRICS.items():
        if m.split == "test":
            val = METRICS[selection_metric(n)]
            assert (val.split, val.task, val.mode, val.when) == ("val", m.task, m.mode, "epoch"), n
    assert [f.name for f in SCHEMA if f.name.startswith("final_")] == [f"final_{m}" for m in RESULT_METRICS]


def test_the_tasks_compute_exactly_their_registered_metrics():
    from pitfalls.train.anticipation import anticipation_errors, summarize_anticipation
    from pitfalls.train.metrics import phase_scores, summarize_phase

    scores = [phase_scores(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)] * 2
    assert set(summarize_phase(scores)) <= set(METRICS)
    task = PhaseTask(2)
    video = Video("v", None, np.array([0, 1, 0]), np.zeros((3, 0)))
    records = [task.video_record(np.eye(2)[[0, 1, 1]], video)] * 2
    for split in ("val", "test"):
        registered = {n for n, m in METRICS.items() if m.task == "phase" and m.split == split}
        assert set(task.summarize(records, f"{split}_")) == registered
    assert {f"val_{n}" for n in names("phase")} <= set(task.summarize(records))
    minutes = np.array([[0.0], [0.5], [3.0]])
    anticipation = summarize_anticipation(anticipation_errors(minutes, minutes, 3.0))
    assert set(anticipation) == {f"val_{n}" for n in names("anticipation")}


def test_the_cheat_gap_reports_its_registered_metrics():
    from pitfalls.train.cheat_gap import cheat_gap_metrics

    video = Video("v", None, np.array([0, 1, 0]), np.zeros((3, 0)))
    record = PhaseTask(2).video_record(np.eye(2)[[0, 1, 1]], video)
    got = [k for split in ("val", "train")
           for k in cheat_gap_metrics(PhaseTask(2), [record], [record], split)]
    assert got == [n for n in AFTER_TRAINING_METRICS if n.startswith(("val_", "train_"))]


def test_a_trial_reports_only_registered_metrics_and_probes():
    from pitfalls.train import train

    raw = tiny_study(budget={"epochs": 1, "steps_per_epoch": 1},
                     evaluation={"probes": True, "cheat_gap": True})
    metrics = train(TrialConfig(parse_study(raw), tiny_params(norm="batch")))
    loop = {"epoch", "train_frames_per_s", "epoch_s", "world_size"}  # the loop's own telemetry
    assert set(metrics) - loop <= set(METRICS) | set(COLUMNS), set(metrics) - loop - set(METRICS)


# ---------------------------------------------------------------------------------------------
# Probes


def test_probe_columns_are_the_schema_columns_and_what_the_probes_fill():
    from pitfalls.probes.summary import probe_model

    assert SCHEMA_PROBES == COLUMNS
    assert all(v.flag in COLUMNS and v.value in COLUMNS for p in PROBES.values() for v in p.verdicts)
    model = lstm_model("batch", 0, 3)
    clip = torch.rand(2, 4, 3, 16, 16)
    got = probe_model(model, clip, torch.zeros(2, 4, dtype=torch.long), [clip])
    assert set(got) == set(COLUMNS)


# ---------------------------------------------------------------------------------------------
# Trial parameters


def test_trial_parameters_are_declared_once_and_everything_takes_them_from_there():
    assert CORE_FACTORS == ("norm", "frozen_stages", "seq_len", "videos_per_batch")
    assert list(PARAMS) == PARAM_NAMES  # the results' parameter columns
    params = tiny_params()
    assert list(params.as_dict()) == list(PARAMS)  # the MLflow params
    with pytest.raises(TypeError):
        TrialParams("group", 1, 4, 2, 1e-3, 1e-4, 0)  # keyword-only
    from pitfalls.models.video_model import build_model

    model_args = set(inspect.signature(build_model).parameters)
    assert {n for n, p in PARAMS.items() if p.target == "model"} <= model_args
    targets = {p.target for p in PARAMS.values()}
    assert targets == {"model", "sampler", "optimizer", "loop"}


# ---------------------------------------------------------------------------------------------
# Norms and heads


@pytest.mark.parametrize("name", list(NORMS))
def test_each_norm_builds_the_layer_it_says_and_its_properties_hold(name):
    norm = NORMS[name]
    layer = norm.build(8, NormOptions(groups=4, whitening_group_size=4))
    if norm.layers():
        assert norm.is_layer(layer)
    keeps = any(b in dict(layer.named_buffers()) for b in ("running_mean", "running_wm"))
    assert keeps == norm.running_stats, name
    assert not norm.precise_bn or (norm.running_stats and norm.batch_dependent)


@pytest.mark.parametrize("head", list(HEADS))
def test_each_head_owns_its_state_through_its_lanes(head):
    module = HEADS[head]().build(6, 3).eval()  # eval: a head's dropout masks depend on chunking
    feats = torch.rand(4, 5, 6)
    out, state = module(feats)
    assert out.shape == (4, 5, 3)
    lanes = module.lanes
    halves = [lanes.select(state, slice(0, 2)), lanes.select(state, slice(2, 4))]
    joined = lanes.join(halves)
    assert all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(joined),
                                                  torch.utils._pytree.tree_leaves(state)))
    reset = lanes.reset(state, np.array([True, False, False, True]), torch.device("cpu"))
    for leaf in torch.utils._pytree.tree_leaves(reset):
        index = [slice(None)] * leaf.dim()
        index[lanes.dim] = 0
        assert not leaf.requires_grad and leaf[tuple(index)].abs().sum() == 0
    # continuing from the state is the same as one pass over the whole sequence
    first, mid = module(feats[:, :2])
    second, _ = module(feats[:, 2:], mid)
    assert torch.allclose(torch.cat([first, second], 1), out, atol=1e-6)


@pytest.mark.parametrize("head", list(HEADS))
def test_a_trial_trains_with_each_head_and_carries_its_state(head):
    from pitfalls.train import train

    small = {"hidden_size": 8} if "hidden_size" in field_types(HEADS[head]) else {}
    raw = tiny_study(budget={"epochs": 1, "steps_per_epoch": 2},
                     model={"backbone": "test_resnet", "temporal_head": {"type": head, **small}})
    cfg = TrialConfig(parse_study(raw), tiny_params(carry_hidden=True))
    assert cfg.params.temporal_head == head
    assert np.isfinite(train(cfg)["train_loss"])


# ---------------------------------------------------------------------------------------------
# Written once


def _registered_lists() -> dict[str, tuple[set[str], str]]:
    """name -> (the registered names, the module that may list them)."""
    return {
        "metrics": (set(METRICS), "pitfalls/config/metrics.py"),
        "norms": (set(NORMS), "pitfalls/models/norms.py"),
        "probe columns": (set(COLUMNS), "pitfalls/probes/registry.py"),
        "trial parameters": (set(PARAMS), "pitfalls/config/params.py"),
        "temporal heads": (set(HEADS), "pitfalls/models/heads.py"),
    }


def test_no_registered_list_is_written_twice():
    """A tuple, list or set literal holding three or more names of a registry, outside the
    registry's own module, is a second copy that can drift: derive it from the registry."""
    found = []
    for path in sorted((ROOT / "pitfalls").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                continue
            strings = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            for what, (registered, home) in _registered_lists().items():
                if rel != home and len(strings & registered) >= 3:
                    found.append(f"{rel}:{node.lineno}: {what} {sorted(strings & registered)}")
    assert not found, "\n".join(found)


def test_the_docs_list_every_extension_point():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for point in ("norm", "factor", "temporal head", "metric", "probe", "dataset"):
        assert f"### Adding a {point}" in text, point
    for module in sorted((ROOT / "pitfalls").rglob("*.py")):
        rel = module.relative_to(ROOT / "pitfalls").as_posix()
        if module.name != "__init__.py":
            assert rel in text, f"docs/architecture.md does not describe pitfalls/{rel}"


def test_the_lists_of_registered_names_in_the_readme_are_the_registries():
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{n}`" in readme for n in NORMS)
    assert all(f"`{h}`" in readme for h in HEADS)
    assert Path(ROOT / "docs" / "architecture.md").is_file()

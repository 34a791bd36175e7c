"""Every kind of bad study a user can write is refused by `pitfalls run` the same way: exit code 2,
one message naming the field, the bad value and what would be valid, no traceback, nothing
written (no study directory, no MLflow store, no Ray session)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from pitfalls.cli import main
from tests.helpers import tiny_study

FACTORS = {"norm": ["batch"], "frozen_stages": [0], "seq_len": [4], "videos_per_batch": [2]}


def _space(**nuisance):
    return {"factors": FACTORS, "nuisance": nuisance}


def _study(**overrides) -> str:
    return yaml.safe_dump(tiny_study(**overrides))


def _with(path: list, value) -> str:
    raw = tiny_study()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return yaml.safe_dump(raw)


# (id, study file text, what the message must say)
CASES = [
    ("yaml-syntax", "name: x\nbudget: {epochs: 2\n", "YAML syntax: line 3"),
    ("empty-file", "", "the study file is empty"),
    ("not-a-mapping", "- name: x\n- budget: 2\n", "must be a mapping of sections"),
    ("unknown-top-key", _study(budgets={"epochs": 2}), "budgets: 'budgets' is not a known field; valid choices: name"),
    ("unknown-nested-key", _study(budget={"epoch": 2}), "budget.epoch: 'epoch' is not a known field; valid choices: epochs, steps_per_epoch"),
    ("unknown-deep-key", _with(["dataset", "options", "colour"], True), "dataset.options.colour: 'colour' is not a known field"),
    ("unknown-head-key", _with(["model", "temporal_head", "units"], 8), "model.temporal_head.units: 'units' is not a known field; valid choices: type, hidden_size"),
    ("string-for-int", _study(budget={"epochs": "3"}), "budget.epochs: '3' must be an integer"),
    ("float-for-int", _study(budget={"epochs": 2.5}), "budget.epochs: 2.5 must be an integer"),
    ("bool-for-number", _study(resources={"workers": True}), "resources.workers: True must be an integer"),
    ("bool-for-float", _study(resources={"cpus_per_worker": True}), "resources.cpus_per_worker: True must be a number"),
    ("string-for-bool", _study(evaluation={"probes": "yes"}), "evaluation.probes: 'yes' must be true or false"),
    ("null-for-int", _with(["dataset", "options", "max_phase_frames"], None), "dataset.options.max_phase_frames: None must be an integer"),
    ("nan", _study(augmentation={"brightness": float("nan")}), "augmentation.brightness: nan must be a finite number"),
    ("infinity", _study(resources={"cpus_per_worker": float("inf")}), "resources.cpus_per_worker: inf must be a finite number"),
    ("negative-count", _study(budget={"steps_per_epoch": -1}), "budget.steps_per_epoch: -1 must be >= 1"),
    ("zero-count", _study(budget={"epochs": 0}), "budget.epochs: 0 must be >= 1"),
    ("zero-level", _with(["search_space", "factors", "seq_len"], [0]), "factors.seq_len[0]: 0 must be >= 1"),
    ("empty-seeds", _study(seeds=[]), "seeds: [] must be a non-empty list"),
    ("empty-levels", _with(["search_space", "factors", "norm"], []), "factors.norm: [] must be a non-empty list of levels"),
    ("repeated-levels", _with(["search_space", "factors", "norm"], ["batch", "batch"]), "has repeated levels"),
    ("repeated-seeds", _study(seeds=[0, 1, 0]), "seeds: [0, 1, 0] has repeated seeds"),
    ("negative-seed", _study(seeds=[-1]), "seeds[0]: -1 must be >= 0"),
    ("negative-generator-seed", _with(["dataset", "options", "seed"], -3), "dataset.options.seed: -3 must be >= 0"),
    ("reversed-bounds", _study(search_space=_space(lr={"distribution": "uniform", "low": 0.1, "high": 0.01, "default": 0.05})),
     "nuisance.lr.high: 0.01 must be greater than low (0.1)"),
    ("log-scale-not-positive", _study(search_space=_space(weight_decay={"distribution": "loguniform", "low": 0.0, "high": 0.1, "default": 0.01})),
     "nuisance.weight_decay.low: 0.0 must be > 0 for loguniform"),
    ("default-outside-bounds", _study(search_space=_space(lr={"distribution": "loguniform", "low": 1e-4, "high": 1e-2, "default": 0.5})),
     "nuisance.lr.default: 0.5 must lie in [low, high]"),
    ("grid-nuisance-without-default", _study(search_space=_space(lr={"distribution": "loguniform", "low": 1e-4, "high": 1e-2})),
     "nuisance.lr.default: None is required: a grid study samples nothing"),
    ("no-training-video-left", _with(["dataset", "options"], {"num_videos": 3, "val_videos": 3, "frame_size": 16}),
     "dataset.options.val_videos: 3 must leave at least one training video"),
    ("too-few-videos-for-a-batch", _with(["dataset", "options"], {"num_videos": 3, "val_videos": 2, "frame_size": 16}),
     "videos_per_batch[0]: 2 exceeds the 1 training videos"),
    ("name-dotdot", _study(name=".."), "name: '..' must be 1-128 letters"),
    ("name-slash", _study(name="a/b"), "name: 'a/b' must be"),
    ("name-control-char", _study(name="a\tb"), "name: 'a\\tb' must be"),
    ("missing-weights-file", _with(["model", "weights"], "/nonexistent/weights.pt"), "model.weights: '/nonexistent/weights.pt' is not an existing local file"),
    ("missing-dataset-root", _study(dataset={"name": "cholec80", "options": {"root": "/nonexistent/cholec80"}}), "dataset (cholec80 dataset at /nonexistent/cholec80)"),
    ("missing-search-space-file", _study(search_space="no_such_space"), "search_space: 'no_such_space' was not found"),
    ("unknown-choice", _study(searcher={"type": "bayes"}), "searcher.type: 'bayes' valid choices: grid, optuna"),
    ("unknown-norm", _with(["search_space", "factors", "norm"], ["batch", "bogus"]), "norm[1]: 'bogus' is not a known norm; valid choices: batch"),
    ("unknown-head", _with(["model", "temporal_head", "type"], "transformer"), "model.temporal_head.type: 'transformer' is not a known temporal head; valid choices: lstm, gru, tcn"),
    ("unknown-backbone", _with(["model", "backbone"], "resnet_nope"), "model.backbone: 'resnet_nope' is not a timm model name"),
    ("unknown-dataset", _study(dataset={"name": "kinetics"}), "dataset.name: 'kinetics' is not a known dataset; valid choices: synthetic, cholec80, frames"),
    ("unknown-selection", _study(evaluation={"select": "worst"}), "evaluation.select: 'worst' valid choices: best, last"),
    ("unknown-protocol", _study(evaluation={"protocol": "octave"}), "evaluation.protocol: 'octave' valid choices: matlab, corrected"),
    ("test-metric-without-test-split", _with(["dataset", "options", "test_videos"], 0).replace(
        "name: val_accuracy", "name: test_relaxed_accuracy"), "metric.name: 'test_relaxed_accuracy' needs a test split"),
    ("unknown-test-metric", _study(metric={"name": "test_wMAE", "mode": "min"}), "metric.name: 'test_wMAE' is not a metric of task phase"),
]


@pytest.mark.parametrize("text, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_study_is_one_clear_error_and_writes_nothing(tmp_path, capsys, text, needle):
    study = tmp_path / "bad.yaml"
    study.write_text(text)
    storage = tmp_path / "runs"
    assert main(["run", str(study), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert not storage.exists()


def test_a_missing_study_file_is_one_clear_error(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--storage", str(tmp_path / "runs")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_every_problem_of_a_section_is_reported_even_when_a_field_of_it_is_bad(tmp_path, capsys):
    """A broken field does not hide what else is wrong, in its own section or another."""
    raw = tiny_study(budget={"epochs": "two", "steps_per_epoch": 0},
                     dataset={"name": "synthetic", "options": {"noise": "loud", "num_videos": 3,
                                                              "val_videos": 3, "frame_size": 16}})
    raw["search_space"]["factors"]["frozen_stages"] = [9]
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert main(["run", str(study), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    for needle in ("budget.epochs: 'two' must be an integer", "budget.steps_per_epoch: 0 must be >= 1",
                   "dataset.options.noise: 'loud' must be a number",
                   "dataset.options.val_videos: 3 must leave at least one training video",
                   "frozen_stages[0]: 9 is beyond test_resnet's 4 stages"):
        assert needle in err, err


def test_validation_is_quick_and_imports_neither_torch_nor_timm(tmp_path):
    """Through the real command line: a bad study fails in well under 10 s (the acceptance bound;
    benchmarks/validation.py measures it), before torch or timm is imported."""
    raw = tiny_study()
    raw["search_space"]["factors"]["norm"] = ["bogus"]
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump(raw))
    code = ("import sys; from pitfalls.cli import main; rc = main(['run', sys.argv[1], '--storage', "
            "sys.argv[2]]); print(sorted(m for m in ('torch', 'timm') if m in sys.modules)); sys.exit(rc)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(study), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "[]" and "'bogus' is not a known norm" in proc.stderr
    assert seconds < 10, seconds


ODD_VALUES = [None, True, -1, 0, 2.5, float("nan"), float("inf"), "", "x", [], [1, "a"], {}, {"a": 1},
              [[1]], 10**12]


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    yield path


def _replaced(raw, path, value):
    import copy

    out = copy.deepcopy(raw)
    if not path:
        return value
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_any_odd_value_anywhere_is_a_study_error_never_a_crash():
    """Every place of a valid study, given each odd value in turn (wrong types, NaN, empty and
    nested containers): parsing ends in a `StudyError` or a valid study, never another exception."""
    from pitfalls.config import StudyError, parse_study

    raw = tiny_study(task={"name": "anticipation", "horizon": 0.5}, metric={"name": "val_wMAE"},
                     evaluation={"probes": True}, augmentation={"hflip": 0.5},
                     search_space={"factors": {"norm": ["batch", "group"], "frozen_stages": [1],
                                               "seq_len": [4], "videos_per_batch": [2],
                                               "batch_eval_x": [{"carry_hidden": True, "lr": 0.01},
                                                                {"carry_hidden": False, "lr": 0.001}]},
                                   "nuisance": {"weight_decay": {"distribution": "uniform", "low": 0.0,
                                                                 "high": 0.1, "default": 0.01}}})
    frames = tiny_study(dataset={"name": "frames", "options": {
        "root": "/data/x", "tool_columns": ["a"], "split": {"train": ["v1"], "val": ["v2"]},
        "frame_size": [32, 24]}}, model={"backbone": "test_resnet", "temporal_head": [
            {"type": "lstm", "hidden_size": 8}, {"type": "gru", "hidden_size": 8}]})
    crashes = []
    for base, environment in ((raw, True), (frames, False)):
        parse_study(base, check_environment=environment)  # the starting point is valid
        for path in _leaves(base):
            for value in ODD_VALUES:
                try:
                    parse_study(_replaced(base, path, value), check_environment=environment)
                except StudyError:
                    pass
                except Exception as e:  # noqa: BLE001 - what this test is looking for
                    crashes.append(f"{'.'.join(map(str, path))} = {value!r}: {type(e).__name__}: {e}")
    assert not crashes, "\n".join(crashes[:20])

"""`pitfalls plan`: its memory estimates against measured peaks, and what it derives from them."""

import subprocess
import sys

import pytest
import torch

from pitfalls.config import parse_study
from pitfalls.plan import PROBE_CAP, _planning_fast_path, _Trainer, configurations, plan_study, render
from tests.conftest import ROOT
from tests.helpers import tiny_study

CPU = torch.device("cpu")


def _spec(**overrides):
    raw = tiny_study(name="planned", **overrides)
    raw["search_space"]["factors"].update({"norm": ["batch", "group"], "frozen_stages": [0, 2],
                                           "seq_len": [32, 64], "videos_per_batch": [2]})
    raw["dataset"]["options"].update({"min_phase_frames": 14, "max_phase_frames": 20})
    return parse_study(raw)


def test_configurations_cross_the_factors_with_defaults():
    configs = configurations(_spec())
    assert len(configs) == 8
    assert {(c["norm"], c["frozen_stages"], c["seq_len"]) for c in configs} == {
        (n, f, t) for n in ("batch", "group") for f in (0, 2) for t in (32, 64)}
    assert all(c["carry_hidden"] is False and c["videos_per_batch"] == 2 for c in configs)


def test_configurations_take_a_linked_factor_level_by_level():
    raw = tiny_study(name="planned")
    factors = raw["search_space"]["factors"]
    del factors["seq_len"], factors["videos_per_batch"]
    factors["batch_shape"] = [{"videos_per_batch": 1, "seq_len": 4},
                              {"videos_per_batch": 2, "seq_len": 2}]
    configs = configurations(parse_study(raw))
    assert [(c["norm"], c["videos_per_batch"], c["seq_len"]) for c in configs] == [
        ("batch", 1, 4), ("batch", 2, 2), ("group", 1, 4), ("group", 2, 2)]
    assert all(c["frozen_stages"] == 1 and c["carry_hidden"] is False for c in configs)


def test_memory_estimates_are_within_25_percent_of_measured_peaks():
    """Beyond the probed frames (PROBE_CAP) the estimate extrapolates; a real step measures.
    The evaluation pass: 4 lanes x 64 frames (where GroupNorm's fixed workspace no longer
    dominates)."""
    spec = _spec(performance={"eval_videos": 4, "eval_chunk": 64})
    plan = plan_study(spec, CPU)
    assert all(c.frames_per_micro_step > PROBE_CAP for c in plan.configs)
    trainers = {}
    for c in plan.configs:
        shape = (c.params["norm"], c.params["frozen_stages"])
        trainer = trainers.setdefault(shape, _Trainer(spec, *shape, CPU, plan.fast))
        measured, _ = trainer.peak(c.frames_per_micro_step)
        assert 0.75 <= c.train_peak_bytes / measured <= 1.25, (c.params, c.train_peak_bytes, measured)
        # an evaluation pass of eval_videos x eval_chunk frames (no gradients), weights resident
        frames = plan.fast.eval_videos * plan.fast.eval_chunk
        assert frames == 256
        measured = trainer.resident + trainer.transient_bytes(frames)
        assert 0.75 <= c.eval_peak_bytes / measured <= 1.25, (c.params, c.eval_peak_bytes, measured)
        assert c.peak_bytes == max(c.train_peak_bytes, c.eval_peak_bytes)


def test_freezing_frees_memory_for_longer_sequences():
    plan = plan_study(_spec(), CPU, gpu_memory_gb=0.05)
    for norm in ("batch", "group"):
        shallow, deep = plan.shapes[(norm, 0)], plan.shapes[(norm, 2)]
        assert deep.bytes_per_frame < shallow.bytes_per_frame
        assert deep.longest(plan.budget_bytes, 2) > shallow.longest(plan.budget_bytes, 2) > 0
    text = render(plan)
    assert "longest sequence that fits" in text and "| group | 2 |" in text
    assert all(c.step_s > 0 and c.trial_s > 0 for c in plan.configs)


def test_precise_bn_passes_are_costed_for_bn_models_that_use_them():
    raw = tiny_study(name="planned", evaluation={"precise_bn_batches": 50})
    raw["search_space"]["factors"].update({"norm": ["batch", "group"], "frozen_stages": [0],
                                           "precise_bn": [False, True]})
    spec = parse_study(raw)
    plan = plan_study(spec, CPU)
    trial_s = {(c.params["norm"], c.params["precise_bn"]): c.trial_s for c in plan.configs}
    bn = plan.shapes[("batch", 0)]
    frames = raw["search_space"]["factors"]["videos_per_batch"][0] * raw["search_space"]["factors"]["seq_len"][0]
    extra = spec.budget.epochs * 50 * frames * bn.eval_s_per_frame
    assert bn.batch_stats and not plan.shapes[("group", 0)].batch_stats
    assert trial_s[("batch", True)] - trial_s[("batch", False)] == pytest.approx(extra)
    assert trial_s[("group", True)] == trial_s[("group", False)]
    assert "PreciseBN's 50 batches per epoch included" in render(plan)


def test_a_budget_too_small_says_no():
    plan = plan_study(_spec(), CPU, gpu_memory_gb=0.001)
    assert not any(c.fits for c in plan.configs)
    assert "| NO |" in render(plan)


def test_a_gpu_study_is_planned_with_the_gpus_precision():
    spec = _spec(resources={"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1})
    fast = _planning_fast_path(spec, CPU)
    assert fast.precision == "bf16" and fast.channels_last


def test_plan_cli_on_a_shipped_study(capsys):
    from pitfalls.cli import main

    assert main(["plan", str(ROOT / "studies" / "quickstart.yaml"), "--gpu-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert "plan: quickstart: 8 trials (grid), 4 configuration(s)" in out
    assert "memory budget 16.00 GiB (--gpu-memory 16 GB)" in out
    assert out.count("| yes |") == 4 and "compute on this cpu" in out


@pytest.mark.parametrize("bad", ["nope.yaml"])
def test_plan_cli_refuses_a_missing_study(bad):
    proc = subprocess.run([sys.executable, "-m", "pitfalls.cli", "plan", bad],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "does not exist" in proc.stderr

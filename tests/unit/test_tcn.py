"""The causal multi-stage TCN head: causal by the leakage probe (a centred variant is not),
exact across evaluation chunks, its training loss the sum over its stages, and its options
validated with the study."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pitfalls.config import StudyError, parse_study
from pitfalls.models.heads import LSTMHead, TCNHead
from pitfalls.models.temporal import _CausalResidual, training_loss
from pitfalls.models.video_model import VideoModel, chunk_bounds, forward_video
from pitfalls.probes import leakage
from pitfalls.train.tasks import PhaseTask
from tests.helpers import tiny_study

CPU = torch.device("cpu")


def _model(head=None) -> VideoModel:
    """A tiny BN-free stand-in backbone (conv, GroupNorm, pooling) and a TCN head (the defaults)."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return VideoModel(cnn, (head or TCNHead()).build(8, 4))


class _Centred(_CausalResidual):
    """The same layer with centred padding: frame t sees frames t + dilation."""

    def forward(self, x, past):
        h = nn.functional.pad(x, (self.context // 2, self.context - self.context // 2))
        return x + self.dropout(self.mix(torch.relu(self.conv(h)))), past


def _clip(t=16):
    return torch.rand(2, t, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_tcn_is_causal_by_the_leakage_probe(mode):
    model = _model().train(mode == "train")  # train: dropout 0.5 is on, the probe fixes its masks
    report = leakage(model, _clip())
    assert not report.leaks and report.mode == mode
    assert all(r.max_change == 0.0 and not r.flagged for r in report.results.values())


@pytest.mark.parametrize("stage", [0, 1])
def test_a_centred_tcn_is_flagged_in_both_modes(stage):
    model = _model()
    for layer in model.head.stages[stage].layers:
        layer.__class__ = _Centred
    report = leakage(model.train(), _clip())
    assert report.results["train"].flagged and report.results["eval"].flagged


def test_chunked_carried_evaluation_equals_one_pass_over_the_video():
    """Each layer's state is its last (kernel-1)*dilation input frames: chunks of 7 frames with
    the state carried give what one 40-frame pass gives (deepest layer: 512 frames of context)."""
    model = _model().eval()
    frames = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    with torch.no_grad():
        whole = torch.cat([o for _, _, o in forward_video(model, frames, chunk_bounds(40, 40), CPU)], 1)
        chunked = torch.cat([o for _, _, o in forward_video(model, frames, chunk_bounds(40, 7), CPU)], 1)
        fresh = torch.cat([o for _, _, o in forward_video(model, frames, chunk_bounds(40, 7), CPU,
                                                          carry_state=False)], 1)
    assert whole.shape == (1, 40, 4)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    assert not torch.allclose(fresh[:, 7:], whole[:, 7:], atol=1e-3)  # the state carries context


def test_a_reset_lane_starts_like_a_new_video():
    head = TCNHead(layers=4, feature_maps=8).build(6, 3).eval()
    feats = torch.randn(3, 5, 6)
    with torch.no_grad():
        _, state = head(feats)
        reset = head.lanes.reset(state, np.array([True, False, True]), CPU)
        again, _ = head(feats, reset)
        fresh, _ = head(feats)
        carried, _ = head(feats, state)
    assert torch.equal(again[[0, 2]], fresh[[0, 2]]) and torch.equal(again[1], carried[1])
    assert not torch.allclose(carried, fresh)


def _ms_tcn_loss(outs, y, task, smoothing):
    """MS-TCN's loss as its code writes it, (B, C, T) layout: per stage CE + lambda x truncated MSE."""
    total = 0
    for o in outs:
        p = o.transpose(1, 2)
        total = total + task.loss(o, (y,))
        mse = nn.functional.mse_loss(p[:, :, 1:].log_softmax(1), p.detach()[:, :, :-1].log_softmax(1),
                                     reduction="none")
        total = total + smoothing * mse.clamp(0, 16).mean()
    return total


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_the_training_loss_sums_the_task_loss_over_the_stages(smoothing):
    head = TCNHead(stages=3, layers=3, feature_maps=8, smoothing=smoothing).build(6, 4).eval()
    feats = torch.randn(2, 10, 6, requires_grad=True)
    y = torch.randint(0, 4, (2, 10), generator=torch.Generator().manual_seed(0))
    task = PhaseTask(4)
    outs, _ = head.stage_outputs(feats)
    got, state = training_loss(head, feats, None, lambda out: task.loss(out, (y,)))
    assert len(outs) == 3 and torch.equal(head(feats)[0], outs[-1])  # forward: the last stage
    torch.testing.assert_close(got, _ms_tcn_loss(outs, y, task, smoothing))
    assert got > task.loss(outs[-1], (y,)) and len(state) == 3 * 3
    got.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_a_head_without_the_hook_trains_on_the_task_loss_of_its_output_bit_for_bit():
    model = _model(LSTMHead(hidden_size=8))
    x, y = _clip(4), torch.randint(0, 4, (2, 4))
    task = PhaseTask(4)
    loss, state = model(x, None, loss=lambda out: task.loss(out, (y,)))
    out, plain_state = model(x)
    assert torch.equal(loss, task.loss(out, (y,)))
    assert all(torch.equal(a, b) for a, b in zip(state, plain_state))


def _heads_study(**overrides):
    raw = tiny_study(model={"backbone": "test_resnet", "temporal_head": [
        {"type": "lstm", "hidden_size": 8}, {"type": "tcn", "layers": 4, "feature_maps": 16}]},
        **overrides)
    raw["search_space"]["factors"]["temporal_head"] = ["lstm", "tcn"]
    return raw


def test_a_study_ablating_lstm_against_tcn_validates_and_round_trips():
    spec = parse_study(_heads_study())
    assert spec.num_trials == 4 and "temporal_head" in spec.search_space.varied_factors
    assert spec.model.head_options("tcn") == TCNHead(layers=4, feature_maps=16)
    assert parse_study(spec.to_dict()) == spec


def test_tcn_options_are_checked_and_smoothing_is_for_phase_logits_only():
    raw = _heads_study()
    raw["model"]["temporal_head"][1].update(dropout=1.0, layers=17, smoothing=0.15)
    with pytest.raises(StudyError) as e:
        parse_study(raw)
    assert "model.temporal_head[1].dropout: 1.0 must be < 1" in str(e.value)
    assert "model.temporal_head[1].layers: 17 must be <= 16" in str(e.value)
    raw = _heads_study(task={"name": "anticipation", "horizon": 0.25}, metric={})
    raw["model"]["temporal_head"][1]["smoothing"] = 0.15
    with pytest.raises(StudyError, match=r"model.temporal_head\[1\].smoothing: 0.15 applies to task "
                                         "phase only"):
        parse_study(raw)
    raw["model"]["temporal_head"][1]["smoothing"] = 0.0
    assert parse_study(raw).model.head_options("tcn").smoothing == 0.0
    assert parse_study(_heads_study()).model.head_options("tcn").smoothing == 0.0  # off by default

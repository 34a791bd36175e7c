"""Probes on deliberately built tiny models (leaky and clean), and PreciseBN against closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pitfalls.models.precise_bn import population_statistics, update_bn_stats
from pitfalls.probes import batch_dependence, leakage, stale_statistics, train_eval_gap
from tests.helpers import lstm_model


class FrameCNN(nn.Module):
    """(B, T, C, H, W) -> (B, T, K): a per-frame CNN with a chosen norm, then a temporal head."""

    def __init__(self, norm: nn.Module, head: nn.Module | None = None, k: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.head = head
        self.fc = nn.Linear(8 if head is None else head.out_features, k)

    def forward(self, x):
        b, t = x.shape[:2]
        f = self.norm(self.conv(x.flatten(0, 1))).relu().mean((2, 3)).view(b, t, -1)
        return self.fc(self.head(f) if self.head is not None else f)


class BiLSTM(nn.Module):
    out_features = 16

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 8, batch_first=True, bidirectional=True)

    def forward(self, f):
        return self.lstm(f)[0]


class TemporalConv(nn.Module):
    """A 1-D convolution over time; causal pads only on the left."""

    out_features = 8

    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal
        self.conv = nn.Conv1d(8, 8, 3, padding=0)

    def forward(self, f):
        x = f.transpose(1, 2)
        x = nn.functional.pad(x, (2, 0) if self.causal else (1, 1))
        return self.conv(x).transpose(1, 2)


def _clip(b=2, t=8):
    torch.manual_seed(0)
    return torch.rand(b, t, 3, 16, 16)


def test_bn_over_time_leaks_in_train_mode_only_and_model_is_restored():
    torch.manual_seed(0)
    model = FrameCNN(nn.BatchNorm2d(8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = leakage(model, _clip())
    assert report.leaks and report.mode == "train" and report.max_change > 1e-3
    assert not report.results["eval"].flagged and report.results["eval"].max_change == 0.0
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    report = leakage(model, _clip())
    assert not report.leaks and report.mode == "eval" and report.results["train"].flagged
    assert not model.training


@pytest.mark.parametrize("head,leaky", [
    (BiLSTM(), True), (TemporalConv(causal=False), True), (TemporalConv(causal=True), False),
    (None, False),
])
def test_temporal_heads_with_bn_free_backbone(head, leaky):
    torch.manual_seed(0)
    model = FrameCNN(nn.GroupNorm(4, 8), head).train()
    report = leakage(model, _clip())
    assert report.leaks is leaky
    assert report.results["eval"].flagged is leaky  # a non-causal head leaks in both modes


class FaintLeak(nn.Module):
    """A causal LSTM whose output adds a faint leak (`kind`), in train mode only for `center`:
    mean: eps x the sequence's mean feature; next: eps x the next frame's feature; center: BN-like
    centering over the batch's frames by eps x their mean (eval: a fixed zero "running mean");
    pad: a centred temporal convolution whose future tap is scaled by eps."""

    out_features = 8

    def __init__(self, kind: str, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        if kind == "pad":
            self.conv = nn.Conv1d(8, 8, 3)
            with torch.no_grad():
                self.conv.weight[..., 2] *= eps

    def forward(self, f):
        out = self.lstm(f)[0]
        if self.kind == "mean":
            return out + self.eps * f.mean(1, keepdim=True)
        if self.kind == "next":
            return out + self.eps * torch.cat([f[:, 1:], torch.zeros_like(f[:, :1])], 1)
        if self.kind == "center":
            return out - self.eps * f.mean((0, 1)) if self.training else out
        # centred padding: frame t sees frame t+1 (through the faint tap)
        return out + self.conv(nn.functional.pad(f.transpose(1, 2), (1, 1))).transpose(1, 2)


@pytest.mark.parametrize("kind, eps, modes", [
    ("mean", 1e-3, ("train", "eval")), ("next", 1e-4, ("train", "eval")),
    ("center", 1e-3, ("train",)), ("pad", 1e-4, ("train", "eval")),
])
def test_faint_leaks_are_flagged_above_a_zero_noise_floor(kind, eps, modes):
    """Each leak moves past outputs by less than 1e-4 of the output scale (the fixed tolerance
    that called them clean); on CPU a causal pass repeats to the bit, so the floor is 0."""
    torch.manual_seed(0)
    model = FrameCNN(nn.GroupNorm(4, 8), FaintLeak(kind, eps)).train()
    report = leakage(model, _clip())
    for mode, r in report.results.items():
        assert r.noise_floor == 0.0 and r.flagged is (mode in modes), (mode, r)
        assert r.max_change < 1e-4 or mode not in modes, r  # faint: below the old tolerance
    assert report.leaks


def test_a_faint_batch_statistics_leak_makes_samples_dependent_in_train_mode_only():
    torch.manual_seed(0)
    model = FrameCNN(nn.GroupNorm(4, 8), FaintLeak("center", 1e-3)).train()
    dep = batch_dependence(model, _clip(3))
    assert dep.dependent and dep.max_change < 1e-4 and not dep.results["eval"].flagged


@pytest.mark.parametrize("head", [TemporalConv(causal=True), FaintLeak("mean", 0.0), None])
def test_causal_models_with_a_groupnorm_backbone_stay_clean_in_both_modes(head):
    torch.manual_seed(0)
    model = FrameCNN(nn.GroupNorm(4, 8), head).train()
    for report in (leakage(model, _clip()), batch_dependence(model, _clip(3))):
        for r in report.results.values():
            assert not r.flagged and r.max_change == 0.0 and r.noise_floor == 0.0, r
            assert r.threshold > 0.0  # a few ulps of the output scale


class Jitter(nn.Module):
    """Adds noise from its own generator, different on every call: a GPU's non-deterministic
    kernels, on a CPU."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.g = scale, torch.Generator().manual_seed(0)

    def forward(self, x):
        return x + self.scale * torch.randn(x.shape, generator=self.g)


def test_the_measured_noise_floor_sets_the_threshold():
    torch.manual_seed(0)
    causal = nn.Sequential(FrameCNN(nn.GroupNorm(4, 8), FaintLeak("mean", 0.0)), Jitter(1e-6))
    clean = leakage(causal, _clip())
    r = clean.results["train"]
    assert not clean.leaks and r.noise_floor > 1e-6 and r.max_change > 1e-6  # noise, not a leak
    assert r.threshold == pytest.approx(4 * r.noise_floor)
    torch.manual_seed(0)
    leaky = nn.Sequential(FrameCNN(nn.GroupNorm(4, 8), FaintLeak("mean", 1e-3)), Jitter(1e-6))
    assert leakage(leaky, _clip()).leaks


def test_dropout_is_not_mistaken_for_leakage():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5))
    model.train()
    assert not leakage(model, _clip()).leaks


def test_platform_models_bn_leaks_groupnorm_does_not():
    for norm, leaky in (("batch", True), ("group", False), ("batch_eval", False),
                        ("frozen_batch", False)):
        torch.manual_seed(0)
        model = lstm_model(norm, 0, 4).train()
        report = leakage(model, torch.rand(1, 6, 3, 32, 32))
        assert report.leaks is leaky and not report.results["eval"].flagged, norm


@pytest.mark.parametrize("norm", ["iternorm", "swbn", "dbn"])
def test_whitening_norms_are_flagged_in_train_mode_not_in_eval(norm):
    torch.manual_seed(0)
    model = lstm_model(norm, 0, 4).train()
    clip = torch.rand(2, 6, 3, 32, 32)
    report = leakage(model, clip)
    assert report.leaks and not report.results["eval"].flagged
    assert batch_dependence(model, clip).dependent


def test_batch_dependence():
    torch.manual_seed(0)
    bn = FrameCNN(nn.BatchNorm2d(8)).train()
    assert batch_dependence(bn, _clip(3)).dependent
    assert not batch_dependence(bn.eval(), _clip(3)).dependent
    assert not batch_dependence(FrameCNN(nn.GroupNorm(4, 8)).train(), _clip(3)).dependent


def test_train_eval_gap_zero_without_batch_statistics_positive_with():
    torch.manual_seed(0)
    clip, labels = _clip(), torch.zeros(2, 8, dtype=torch.long)
    gn = train_eval_gap(FrameCNN(nn.GroupNorm(4, 8)), [(clip, labels)])
    assert gn.max_abs_output_change == 0.0 and gn.accuracy_gap == 0.0
    dropout = FrameCNN(nn.Sequential(nn.GroupNorm(4, 8), nn.Dropout(0.5)))  # dropout is not a gap
    assert train_eval_gap(dropout, [(clip, labels)]).max_abs_output_change == 0.0
    bn = train_eval_gap(FrameCNN(nn.BatchNorm2d(8)), [(clip, labels)])
    assert bn.mean_abs_output_change > 1e-3 and bn.accuracy_train_mode is not None


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm2d(2))


def test_precise_bn_equals_closed_form_population_statistics_with_uneven_batches():
    torch.manual_seed(0)
    batches = [torch.randn(5, 2, 3, 3) * 2 + 1, torch.randn(1, 2, 3, 3) - 4, torch.randn(2, 2, 3, 3)]
    model = _bn_net()
    update_bn_stats(model, batches)
    allx = torch.cat([b.transpose(0, 1).flatten(1) for b in batches], 1).double()  # (C, n)
    bn = model[0]
    assert torch.allclose(bn.running_mean.double(), allx.mean(1), atol=1e-6)
    assert torch.allclose(bn.running_var.double(), allx.var(1, unbiased=True), atol=1e-5)
    # the naive average of per-batch statistics (equal weights) is measurably different here
    naive = torch.stack([b.transpose(0, 1).flatten(1).mean(1) for b in batches]).mean(0)
    assert not torch.allclose(naive.double(), allx.mean(1), atol=1e-2)


def test_precise_bn_changes_nothing_but_running_stats_and_restores_mode():
    model = _bn_net().eval()
    params = {k: v.clone() for k, v in model.named_parameters()}
    stats = population_statistics(model, [torch.randn(4, 2, 3, 3)])
    assert stats["0"][2] == 4 * 3 * 3
    assert not model.training
    assert torch.equal(model[0].running_mean, torch.zeros(2))  # untouched by the probe
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())


def test_stale_statistics_zero_after_precise_bn():
    model = _bn_net()
    data = [torch.randn(4, 2, 3, 3) * 3 + 2]
    assert stale_statistics(model, data).max_mean_shift > 0.3
    update_bn_stats(model, data)
    stale = stale_statistics(model, data)
    assert stale.max_mean_shift < 1e-5 and stale.max_var_ratio < 1e-5

"""The probes. A probed model maps a float tensor (B, T, C, H, W) to per-frame outputs (B, T, ...)
(a tuple's first element is used, so `VideoModel`'s `(logits, state)` works as is).

Tolerance. Two forward passes of a causal model over identical past frames execute the same
operations on the same values, so on CPU the past outputs agree to the bit; on GPUs,
non-deterministic kernels (atomics, algorithm choice) may differ by a few float32 ulps
accumulated over a network: around 1e-6 relative. Leakage through batch statistics moves outputs
by orders of magnitude more when the future is replaced by strong noise (typically 1e-2 to 1
relative). The default threshold, `RTOL = 1e-4` of the output's scale (max |output|, at least
1), sits between the two with two orders of margin on each side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from pitfalls.models.precise_bn import batch_stat_layers, population_statistics

RTOL = 1e-4
SEED = 1234


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(SEED)  # same dropout masks in both passes: only the input differs
        out = model(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).detach().float()


@contextlib.contextmanager
def _preserved(model: nn.Module):
    """Restore mode and every parameter/buffer exactly, whatever the probe's forwards did."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(state[k])
        for m, mode in modes.items():
            m.training = mode


def _tolerance(reference: torch.Tensor, rtol: float) -> float:
    return rtol * max(1.0, reference.abs().max().item())


@dataclass(frozen=True)
class ModeResult:
    mode: str  # "train" | "eval"
    max_change: float
    tolerance: float

    @property
    def flagged(self) -> bool:
        return self.max_change > self.tolerance


@dataclass(frozen=True)
class Leakage:
    """Outputs at times <= t moved when only frames after t changed: the model sees the future."""

    leaks: bool  # in the mode the model was in when probed
    max_change: float
    mode: str
    t: int
    results: dict[str, ModeResult] = field(default_factory=dict)  # both modes


def _future_noise(clip: torch.Tensor, t: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(SEED)
    other = clip.clone()
    noise = torch.randn(other[:, t + 1:].shape, generator=g).to(clip.device, clip.dtype)
    other[:, t + 1:] = clip.mean() + 3 * clip.std().clamp_min(1e-3) * noise
    return other


def leakage(model: nn.Module, clip: torch.Tensor, t: int | None = None,
            rtol: float = RTOL) -> Leakage:
    """Perturb frames t+1.. of `clip` (B, T, C, H, W) and measure the change of outputs at 0..t,
    in the model's current mode and in the other one."""
    if clip.dim() != 5 or clip.shape[1] < 2:
        raise ValueError(f"clip must be (B, T>=2, C, H, W), got {tuple(clip.shape)}")
    t = clip.shape[1] // 2 - 1 if t is None else t
    if not 0 <= t < clip.shape[1] - 1:
        raise ValueError(f"t={t} must be in 0..{clip.shape[1] - 2}")
    current = "train" if model.training else "eval"
    perturbed = _future_noise(clip, t)
    results = {}
    with _preserved(model):
        for mode in (current, "eval" if current == "train" else "train"):
            model.train(mode == "train")
            a = _outputs(model, clip)[:, :t + 1]
            b = _outputs(model, perturbed)[:, :t + 1]
            results[mode] = ModeResult(mode, (a - b).abs().max().item(), _tolerance(a, rtol))
    r = results[current]
    return Leakage(r.flagged, r.max_change, current, t, results)


@dataclass(frozen=True)
class BatchDependence:
    """Sample 0's output moved when only the other samples of the batch changed."""

    dependent: bool
    max_change: float
    mode: str
    results: dict[str, ModeResult] = field(default_factory=dict)


def batch_dependence(model: nn.Module, batch: torch.Tensor, rtol: float = RTOL) -> BatchDependence:
    """Replace samples 1.. of `batch` by noise and measure the change of sample 0's output."""
    if batch.shape[0] < 2:
        raise ValueError(f"batch needs at least 2 samples, got {batch.shape[0]}")
    current = "train" if model.training else "eval"
    g = torch.Generator(device="cpu").manual_seed(SEED)
    other = batch.clone()
    other[1:] = batch.mean() + 3 * batch.std().clamp_min(1e-3) * torch.randn(
        other[1:].shape, generator=g).to(batch.device, batch.dtype)
    results = {}
    with _preserved(model):
        for mode in (current, "eval" if current == "train" else "train"):
            model.train(mode == "train")
            a, b = _outputs(model, batch)[0], _outputs(model, other)[0]
            results[mode] = ModeResult(mode, (a - b).abs().max().item(), _tolerance(a, rtol))
    r = results[current]
    return BatchDependence(r.flagged, r.max_change, current, results)


@dataclass(frozen=True)
class TrainEvalGap:
    """How far outputs and accuracy move between train-mode and eval-mode normalization."""

    mean_abs_output_change: float
    max_abs_output_change: float
    accuracy_train_mode: float | None
    accuracy_eval_mode: float | None

    @property
    def accuracy_gap(self) -> float | None:
        if self.accuracy_train_mode is None or self.accuracy_eval_mode is None:
            return None
        return self.accuracy_train_mode - self.accuracy_eval_mode


def train_eval_gap(model: nn.Module, loader: Iterable) -> TrainEvalGap:
    """`loader` yields clips `x` or `(x, y)` with per-frame class labels y (B, T)."""
    diffs, maxes, hits = [], [], {"train": 0, "eval": 0}
    frames, labelled = 0, False
    with _preserved(model):
        for item in loader:
            x, y = item if isinstance(item, (tuple, list)) else (item, None)
            outs = {}
            for mode in ("train", "eval"):
                model.train(mode == "train")
                outs[mode] = _outputs(model, x)
            d = (outs["train"] - outs["eval"]).abs()
            diffs.append(d.mean().item())
            maxes.append(d.max().item())
            if y is not None:
                labelled = True
                for mode in hits:
                    hits[mode] += (outs[mode].argmax(-1) == y.to(outs[mode].device)).sum().item()
                frames += y.numel()
    if not diffs:
        raise ValueError("loader yielded no batches")
    acc = {m: hits[m] / frames for m in hits} if labelled else {"train": None, "eval": None}
    return TrainEvalGap(sum(diffs) / len(diffs), max(maxes), acc["train"], acc["eval"])


@dataclass(frozen=True)
class StaleStatistics:
    """Distance between BN running statistics and PreciseBN population statistics, per layer.

    mean_shift: max over channels of |running_mean - population_mean| / sqrt(population_var + eps)
    var_ratio:  max over channels of |log(running_var / population_var)|
    """

    layers: dict[str, tuple[float, float]]  # name -> (mean_shift, var_ratio)

    @property
    def max_mean_shift(self) -> float:
        return max((v[0] for v in self.layers.values()), default=0.0)

    @property
    def max_var_ratio(self) -> float:
        return max((v[1] for v in self.layers.values()), default=0.0)


def stale_statistics(model: nn.Module, loader: Iterable) -> StaleStatistics:
    """Compare each BN layer's running statistics with population statistics over `loader`."""
    stats = population_statistics(model, loader)
    modules = dict(model.named_modules())
    layers = {}
    for name, (mean, var, _) in stats.items():
        bn = modules[name]
        eps = bn.eps
        rm, rv = bn.running_mean.double(), bn.running_var.double()
        shift = ((rm - mean).abs() / (var + eps).sqrt()).max().item()
        ratio = ((rv + eps) / (var + eps)).log().abs().max().item()
        layers[name] = (shift, ratio)
    return StaleStatistics(layers)


def has_batch_statistics(model: nn.Module) -> bool:
    return bool(batch_stat_layers(model))

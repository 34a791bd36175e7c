"""The probes. A probed model maps a float tensor (B, T, C, H, W) to per-frame outputs (B, T, ...)
(a tuple's first element is used, so `VideoModel`'s `(logits, state)` works as is).

Threshold. Leakage and batch dependence ask whether outputs moved when only inputs they must not
depend on changed, so the question is what "moved" means next to the model's own noise. The probe
measures that noise instead of assuming it: the same input goes through the model twice in the
same mode, and the largest difference of the compared outputs is the noise floor. On CPU two
passes of a model over identical values execute the same operations and agree to the bit (floor
0); on GPUs non-deterministic kernels (atomics, algorithm choice) set it, a few float32 ulps
accumulated over the network. A change is flagged when it exceeds `FLOOR_FACTOR` times the floor
and at least `MIN_ULPS` float32 ulps of the output scale (max |output|), so that a bit-exact floor
of 0 does not turn rounding-level noise into a verdict. (A fixed tolerance has to sit above the
worst noise of any device, and so misses faint leaks: 1e-4 of the output scale, the earlier rule,
called a causal LSTM plus 1e-3 x the sequence's mean feature clean, past outputs moving ~7e-5.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from pitfalls.models.precise_bn import batch_stat_layers, population_statistics

FLOOR_FACTOR = 4.0  # a change this many times the measured noise floor is not noise
MIN_ULPS = 4  # ... and at least this many float32 ulps of the output scale
SEED = 1234


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(SEED)  # same dropout masks in every pass: only the input differs
        out = model(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).detach().float()


@contextlib.contextmanager
def _preserved(model: nn.Module):
    """Restore mode and every parameter/buffer exactly, whatever the probe's forwards did.
    Yields `restore()`, which puts parameters and buffers back as they were (between passes
    that must start from the same model: a train-mode forward updates BN's running statistics)."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = {m: m.training for m in model.modules()}

    def restore() -> None:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(state[k])

    try:
        with torch.no_grad():
            yield restore
    finally:
        restore()
        for m, mode in modes.items():
            m.training = mode


@dataclass(frozen=True)
class ModeResult:
    """One mode's measurement: the change the probe caused, the noise of the same input run
    twice, and the threshold derived from that noise (see the module docstring)."""

    mode: str  # "train" | "eval"
    max_change: float  # max |output change| when only the inputs the output must ignore changed
    noise_floor: float  # max |difference| of two passes over the same input
    threshold: float

    @property
    def flagged(self) -> bool:
        return self.max_change > self.threshold


def _measure(model: nn.Module, restore: Callable[[], None], mode: str, original: torch.Tensor,
             perturbed: torch.Tensor, compared: Callable[[torch.Tensor], torch.Tensor]) -> ModeResult:
    """`compared(outputs)` picks the outputs that must not move: run `original` twice (the
    noise floor) and `perturbed` once, in `mode`, each pass from the same parameters and buffers."""
    model.train(mode == "train")

    def run(x: torch.Tensor) -> torch.Tensor:
        restore()
        return compared(_outputs(model, x))

    a, again, b = run(original), run(original), run(perturbed)
    floor = (a - again).abs().max().item()
    ulp = torch.finfo(torch.float32).eps * a.abs().max().item()
    return ModeResult(mode, (a - b).abs().max().item(), floor, max(FLOOR_FACTOR * floor, MIN_ULPS * ulp))


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


def leakage(model: nn.Module, clip: torch.Tensor, t: int | None = None) -> Leakage:
    """Perturb frames t+1.. of `clip` (B, T, C, H, W) and measure the change of outputs at 0..t,
    in the model's current mode and in the other one, against the noise floor of that mode."""
    if clip.dim() != 5 or clip.shape[1] < 2:
        raise ValueError(f"clip must be (B, T>=2, C, H, W), got {tuple(clip.shape)}")
    t = clip.shape[1] // 2 - 1 if t is None else t
    if not 0 <= t < clip.shape[1] - 1:
        raise ValueError(f"t={t} must be in 0..{clip.shape[1] - 2}")
    current = "train" if model.training else "eval"
    perturbed = _future_noise(clip, t)
    results = {}
    with _preserved(model) as restore:
        for mode in (current, "eval" if current == "train" else "train"):
            results[mode] = _measure(model, restore, mode, clip, perturbed, lambda out: out[:, :t + 1])
    r = results[current]
    return Leakage(r.flagged, r.max_change, current, t, results)


@dataclass(frozen=True)
class BatchDependence:
    """Sample 0's output moved when only the other samples of the batch changed."""

    dependent: bool
    max_change: float
    mode: str
    results: dict[str, ModeResult] = field(default_factory=dict)


def batch_dependence(model: nn.Module, batch: torch.Tensor) -> BatchDependence:
    """Replace samples 1.. of `batch` by noise and measure the change of sample 0's output,
    in the model's current mode and in the other one, against the noise floor of that mode."""
    if batch.shape[0] < 2:
        raise ValueError(f"batch needs at least 2 samples, got {batch.shape[0]}")
    current = "train" if model.training else "eval"
    g = torch.Generator(device="cpu").manual_seed(SEED)
    other = batch.clone()
    other[1:] = batch.mean() + 3 * batch.std().clamp_min(1e-3) * torch.randn(
        other[1:].shape, generator=g).to(batch.device, batch.dtype)
    results = {}
    with _preserved(model) as restore:
        for mode in (current, "eval" if current == "train" else "train"):
            results[mode] = _measure(model, restore, mode, batch, other, lambda out: out[0])
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
    """`loader` yields clips `x` or `(x, y)` with per-frame class labels y (B, T). Dropout stays
    off in both passes: the gap is normalization's, not dropout's (a TCN head has dropout)."""
    diffs, maxes, hits = [], [], {"train": 0, "eval": 0}
    frames, labelled = 0, False
    with _preserved(model):
        for item in loader:
            x, y = item if isinstance(item, (tuple, list)) else (item, None)
            outs = {}
            for mode in ("train", "eval"):
                model.train(mode == "train")
                for m in model.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd):
                        m.eval()
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

"""PreciseBN: recompute BN population statistics with the model frozen (Wu & Johnson, 2021).

Statistics. For every BN layer whose train-mode forward uses batch statistics (`BatchNorm2d`,
timm's `BatchNormAct2d`, `SyncBatchNorm`; not `batch_eval`/frozen BN), the layer's input over
N training batches is treated as one population of samples, where every frame and every spatial
position is a sample (a batch of shape (B*T, C, H, W) contributes B*T*H*W samples per channel).
With per-channel sums S1 = Σx and S2 = Σx² accumulated in float64 over all n samples,

    running_mean = S1 / n
    running_var  = (S2 / n - running_mean²) · n / (n - 1)     (unbiased, like BN's running_var)

This is the exact mean and variance of the union of all batches, so uneven batch sizes are
weighted by their sample counts and the variance includes the spread *between* batch means.
(fvcore's `update_bn_stats` instead averages per-batch running statistics with equal weights,
which assumes equal batch sizes and drops the between-batch part of the variance.)

Preconditions. The forward passes run in train mode, as in training: earlier BN layers normalize
with their batch statistics, so each layer sees the input distribution it sees in training. No
parameter changes (no gradients are computed); only running_mean/running_var of the selected
layers are replaced, and `num_batches_tracked` is left alone. Under DDP (process group
initialized) S1, S2 and n are summed across ranks, so every rank gets the same statistics. The
model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from pitfalls.models.norms import layers_of


def batch_stat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BN layers whose train-mode output uses batch statistics (what PreciseBN recomputes:
    the norms the registry marks `precise_bn`)."""
    return [(n, m) for n, m in layers_of(model, lambda norm: norm.precise_bn)
            if m.track_running_stats]


@torch.no_grad()
def population_statistics(model: nn.Module, batches: Iterable,
                          forward: Callable[[nn.Module, object], object] | None = None,
                          ) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """name -> (mean, unbiased var, sample count) of each BN layer's input over `batches`.

    Runs `forward(model, batch)` (default `model(batch)`) in train mode on every batch and
    restores the model's mode and running statistics; changes nothing.
    """
    forward = forward or (lambda m, b: m(b))
    layers = batch_stat_layers(model)
    sums = {n: [0.0, 0.0, 0] for n, _ in layers}
    saved = {n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for n, m in layers}

    def hook(name):
        def fn(module, inputs):
            x = inputs[0].detach().to(torch.float64).transpose(0, 1).flatten(1)  # (C, samples)
            acc = sums[name]
            acc[0] = acc[0] + x.sum(1)
            acc[1] = acc[1] + (x * x).sum(1)
            acc[2] += x.shape[1]
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    was_training = model.training
    try:
        model.train()
        for batch in batches:
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        for n, m in layers:  # the forwards above updated them: put them back
            m.running_mean.copy_(saved[n][0])
            m.running_var.copy_(saved[n][1])
            m.num_batches_tracked.copy_(saved[n][2])

    out = {}
    for n, m in layers:
        s1, s2, count = sums[n]
        if count == 0:
            continue
        if dist.is_available() and dist.is_initialized():
            t = torch.cat([s1, s2, torch.tensor([float(count)], dtype=torch.float64, device=s1.device)])
            dist.all_reduce(t)
            c = m.num_features
            s1, s2, count = t[:c], t[c:2 * c], int(t[-1].item())
        mean = s1 / count
        var = (s2 / count - mean * mean).clamp_min(0) * count / max(count - 1, 1)
        out[n] = (mean, var, count)
    return out


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable,
                    forward: Callable[[nn.Module, object], object] | None = None) -> int:
    """Replace running statistics with population statistics; returns the layers updated."""
    stats = population_statistics(model, batches, forward)
    modules = dict(model.named_modules())
    for name, (mean, var, _) in stats.items():
        bn = modules[name]
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return len(stats)

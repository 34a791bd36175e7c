"""The optimizer of a trial's training steps, built from its `optimizer`-target parameters.

- `adamw`: torch's AdamW(lr, weight_decay), the default (the platform's only optimizer before).
- `sgd`: torch's SGD(lr, weight_decay) with Nesterov momentum `momentum` (plain SGD at 0), as
  timm's `sgd` and the NFNet paper train NFNets; weight decay is SGD's coupled L2, on every
  trainable parameter as AdamW's is.

`agc_clip` > 0 adds timm's adaptive gradient clipping (Brock et al. 2021,
`timm.utils.agc.adaptive_clip_grad`) with either optimizer, as the optimizer's step pre-hook: it
runs in every step after the backward pass (of all micro-batches) and, under fp16 loss scaling,
after `GradScaler.step` has unscaled the gradients (a step the scaler skips for inf/NaN
gradients is not clipped either). Only the backbone is clipped: timm's NFNet recipe leaves the
final classifier layer out of AGC (its training script, under `--clip-mode agc`, clips
`timm.models.model_parameters(model, exclude_head=True)`: all but the last weight and bias);
here the temporal head plays the classifier's part, and it is left out whole, whatever its type
(an LSTM's output layer, a multi-stage TCN's classifier per stage), rather than guessing which of
its layers is the final one.

The training loop and the planner both build their optimizer here, so a new optimizer parameter
(declared in `pitfalls.config.params` with target `optimizer`) changes this module only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.utils.agc import adaptive_clip_grad
from torch import nn


def _adamw(params: list[nn.Parameter], s: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=s["lr"], weight_decay=s["weight_decay"])


def _sgd(params: list[nn.Parameter], s: Mapping[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"],
                           weight_decay=s["weight_decay"], nesterov=s["momentum"] > 0)


# Per level of the trial parameter `optimizer` (tests check that they are the declared levels).
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], Mapping[str, Any]], torch.optim.Optimizer]] = {
    "adamw": _adamw, "sgd": _sgd}


def make_optimizer(model: nn.Module, settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of `model`'s trainable parameters (a `VideoModel`: AGC clips its
    `backbone`); `settings` holds the trial's `optimizer`-target parameters
    (`TrialParams.for_target("optimizer")`)."""
    optimizer = OPTIMIZERS[settings["optimizer"]]([q for q in model.parameters() if q.requires_grad],
                                                  settings)
    if settings["agc_clip"] > 0:
        params, factor = clipped_parameters(model), settings["agc_clip"]
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: adaptive_clip_grad(params, clip_factor=factor))
    return optimizer


def clipped_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters AGC clips: the backbone's trainable ones (the head is left out)."""
    return [q for q in model.backbone.parameters() if q.requires_grad]


__all__ = ["OPTIMIZERS", "clipped_parameters", "make_optimizer"]

"""`train()`: one trial of any training mode (`pitfalls.config.modes`), the entry point of the
Ray layer, the benchmarks and the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pitfalls.config import TrialConfig
from pitfalls.train import loop, two_stage
from pitfalls.train.features import FeatureStore


def train(cfg: TrialConfig, report: loop.Report = loop._ignore, device: torch.device | None = None,
          *, resume: dict | None = None, snapshot: bool = False,
          on_setup: Callable[[dict], None] | None = None, predictions: Path | None = None,
          features: FeatureStore | None = None) -> dict:
    """Train one trial; return the last epoch's metrics.

    After every epoch's validation the selection (`evaluation.select`) may take the epoch; after
    the last, the selected weights are evaluated on the test split (`test_*`, `selected_epoch`)
    and, with `predictions` (a local directory) and `evaluation.predictions`, their per-frame
    predictions of val and test are written there (`pitfalls.train.predictions`).

    `on_setup` receives the resolved fast path (`FastPath.as_params()`: precision, layout, ...)
    once, before the first step, for the trial's record.

    Every epoch ends with `report(metrics, checkpoint)`. With `snapshot=True` the checkpoint is
    everything needed to continue exactly from there (`loop.capture`: model, optimizer,
    samplers, RNGs, the head's carried state, the metrics so far), else None; `resume=checkpoint`
    continues such a run at the next epoch, bit for bit as if it had not stopped (same world
    size). The Ray layer stores the checkpoint as the trial's.

    A two-stage trial (`training: two_stage`, `pitfalls.train.two_stage`) keeps its CNN's
    features in `features` (the study's storage; in memory when None); its epochs are numbered
    on from the first stage's.
    """
    device = device or torch.device("cpu")
    if cfg.params.training == "two_stage":
        return two_stage.train(cfg, report, device, resume=resume, snapshot=snapshot,
                               on_setup=on_setup, predictions=predictions, features=features)
    return loop.train(cfg, report, device, resume=resume, snapshot=snapshot, on_setup=on_setup,
                      predictions=predictions)

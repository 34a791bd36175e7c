"""`pitfalls probe`: run the probes on a model described like a trial, on synthetic video."""

from __future__ import annotations

import argparse

import torch

from pitfalls.config import TrialConfig, TrialParams, parse_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="resnet18", help="timm model name (default resnet18)")
    parser.add_argument("--norm", default="batch", help="norm level (default batch)")
    parser.add_argument("--frozen-stages", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--videos-per-batch", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=64, help="LSTM units")
    parser.add_argument("--frame-size", type=int, default=64, help="synthetic frame size (pixels)")
    parser.add_argument("--weights", default=None, help="local state_dict of the backbone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def trial_from_args(args: argparse.Namespace) -> TrialConfig:
    """The same validation as a study (one error listing every problem)."""
    study = parse_study({
        "name": "probe",
        "dataset": {"name": "synthetic", "options": {"frame_size": args.frame_size}},
        "model": {"backbone": args.backbone, "weights": args.weights,
                  "temporal_head": {"type": "lstm", "hidden_size": args.hidden_size}},
        "seeds": [args.seed],
        "search_space": {"factors": {
            "norm": [args.norm], "frozen_stages": [args.frozen_stages], "seq_len": [args.seq_len],
            "videos_per_batch": [args.videos_per_batch]}},
    }, source="pitfalls probe")
    return TrialConfig(study, TrialParams(args.norm, args.frozen_stages, args.seq_len,
                                          args.videos_per_batch, 1e-3, 0.0, args.seed))


def run(args: argparse.Namespace) -> dict[str, float]:
    import numpy as np

    from pitfalls.data import SequenceSampler, make_videos
    from pitfalls.models import build_model
    from pitfalls.probes.summary import probe_model
    from pitfalls.train.loop import make_batch

    cfg = trial_from_args(args)
    p, study = cfg.params, cfg.study
    torch.manual_seed(p.seed)
    train_videos, _ = make_videos(study.dataset.options)
    model = build_model(study.model.backbone, p.norm, p.frozen_stages,
                        study.dataset.options.num_phases, study.model.hidden_size,
                        study.model.group_norm_groups, study.model.weights,
                        study.model.whitening_group_size)
    sampler = SequenceSampler([len(v) for v in train_videos], p.seq_len, max(p.videos_per_batch, 2),
                              np.random.default_rng(p.seed))
    cpu = torch.device("cpu")
    clip, (labels,) = make_batch(train_videos, sampler.sample(), p.seq_len, cpu)
    batches = [make_batch(train_videos, sampler.sample(), p.seq_len, cpu)[0] for _ in range(2)]
    return probe_model(model, clip, labels, batches)

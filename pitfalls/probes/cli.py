"""`pitfalls probe`: run the probes on a model described like a trial, on synthetic video.

Importing this module imports no torch: the CLI's argument parser is built for every command.
"""

from __future__ import annotations

import argparse

from pitfalls.config import StudySpec, TrialConfig, TrialParams
from pitfalls.fields import field_types
from pitfalls.models.heads import HEAD_NAMES, HEADS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="resnet18", help="timm model name (default resnet18)")
    parser.add_argument("--norm", default="batch", help="norm level (default batch)")
    parser.add_argument("--frozen-stages", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--videos-per-batch", type=int, default=2)
    parser.add_argument("--temporal-head", default="lstm", choices=HEAD_NAMES)
    parser.add_argument("--hidden-size", type=int, default=64,
                        help="units of a recurrent head (lstm, gru); the tcn takes its defaults")
    parser.add_argument("--frame-size", type=int, default=64, help="synthetic frame size (pixels)")
    parser.add_argument("--weights", default=None, help="local state_dict of the backbone")
    parser.add_argument("--pretrained", action="store_true",
                        help="timm's pretrained weights for --backbone (a tag in its name, else "
                             "timm's default), from the Hugging Face cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def trial_from_args(args: argparse.Namespace) -> TrialConfig:
    """The same validation as a study (one error listing every problem)."""
    from pitfalls.config import parse_study

    head = {"type": args.temporal_head}
    if "hidden_size" in field_types(HEADS[args.temporal_head]):
        head["hidden_size"] = args.hidden_size
    study: StudySpec = parse_study({
        "name": "probe",
        "dataset": {"name": "synthetic", "options": {"frame_size": args.frame_size}},
        "model": {"backbone": args.backbone, "weights": args.weights, "pretrained": args.pretrained,
                  "temporal_head": head},
        "seeds": [args.seed],
        "search_space": {"factors": {
            "norm": [args.norm], "frozen_stages": [args.frozen_stages], "seq_len": [args.seq_len],
            "videos_per_batch": [args.videos_per_batch]}},
    }, source="pitfalls probe")
    return TrialConfig(study, TrialParams(norm=args.norm, frozen_stages=args.frozen_stages,
                                          seq_len=args.seq_len, videos_per_batch=args.videos_per_batch,
                                          lr=1e-3, weight_decay=0.0, seed=args.seed))


def run(args: argparse.Namespace) -> dict[str, float]:
    import numpy as np
    import torch

    from pitfalls.data import SequenceSampler, make_videos
    from pitfalls.models.inputs import make_batch
    from pitfalls.models.norms import NormOptions
    from pitfalls.models.video_model import build_model
    from pitfalls.probes.summary import probe_model

    cfg = trial_from_args(args)
    p, study = cfg.params, cfg.study
    torch.manual_seed(p.seed)
    train_videos, _ = make_videos(study.dataset.options)
    model = build_model(**p.for_target("model"), num_classes=study.dataset.options.num_phases,
                        head_options=study.model.head_options(p.temporal_head),
                        norm_options=NormOptions(study.model.group_norm_groups,
                                                 study.model.whitening_group_size),
                        weights=study.model.weights, pretrained=study.model.pretrained)
    sampler = SequenceSampler([len(v) for v in train_videos], p.seq_len, max(p.videos_per_batch, 2),
                              np.random.default_rng(p.seed))
    cpu = torch.device("cpu")
    clip, (labels,) = make_batch(train_videos, sampler.sample(), p.seq_len, cpu)
    batches = [make_batch(train_videos, sampler.sample(), p.seq_len, cpu)[0] for _ in range(2)]
    return probe_model(model, clip, labels, batches)

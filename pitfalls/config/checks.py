"""The checks that relate sections of a study, and those that need this machine: the dataset's
videos and instruments, the backbones' structure and supported norms, a local weights file.

Each check reads only sections that validated (`valid`), so a broken section is reported once,
by its own checks, and never through a misleading default. The backbone and data facts come
from `pitfalls.models.backbone.backbone_info` (a shipped table: no torch) and
`pitfalls.data.load.data_facts` (synthetic: computed; real datasets: their label files).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pitfalls.config.problems import Problems, choices
from pitfalls.config.spec import StudySpec

_FACTORS = "search_space.factors"


def study_problems(spec: StudySpec, raw: dict, valid: dict[str, bool], p: Problems) -> None:
    """What the sections say together (no data, no backbone structure needed)."""
    space, res, perf = spec.search_space, spec.resources, spec.performance
    if valid["searcher"] and spec.searcher.type == "grid" and isinstance(raw.get("searcher"), dict) \
            and "num_samples" in raw["searcher"]:
        p.add("searcher.num_samples", spec.searcher.num_samples,
              "applies to optuna only; a grid study runs every factor combination once per seed")
    if valid["searcher"] and valid["seeds"] and spec.searcher.type == "optuna" and len(spec.seeds) != 1:
        p.add("seeds", list(spec.seeds), "optuna searches with one seed (a sampler must not tune "
              "the seed); list one seed, or use searcher.type: grid to cross seeds")
    if valid["searcher"] and spec.searcher.type == "grid":
        for name, dist in space.nuisance:
            if dist.default is None:
                p.add(f"search_space.nuisance.{name}.default", None, "is required: a grid study "
                      "samples nothing and trains every arm at this value (or use searcher.type: optuna)")
    if valid["resources"] and valid["performance"]:
        if perf.precision == "fp16" and not res.gpus_per_worker:
            p.add("performance.precision", perf.precision,
                  "needs GPUs (resources.gpus_per_worker): fp16 trains with CUDA loss scaling; "
                  "use bf16 or fp32 on CPUs")
        k, workers = perf.grad_accumulation, res.workers
        for where, v in space.param_levels("videos_per_batch"):
            if workers > 1 and v % workers:
                p.add(f"{_FACTORS}.{where}", v, f"must be divisible by resources.workers ({workers}): "
                      "each DDP worker takes an equal share of the batch's videos")
            elif k > 1 and v % (workers * k):
                p.add(f"{_FACTORS}.{where}", v,
                      f"must be divisible by resources.workers x performance.grad_accumulation "
                      f"({workers} x {k}): each micro-batch takes an equal share of a worker's "
                      "sequences")
    if valid["resources"] and res.workers > 1 and not res.gpus_per_worker:
        for where, norm in space.param_levels("norm"):
            if norm == "sync_batch":
                p.add(f"{_FACTORS}.{where}", norm,
                      "synchronizes BN across DDP workers on GPUs only (torch's SyncBatchNorm); "
                      "set resources.gpus_per_worker, or use one worker (then it is plain BN)")
    if valid["evaluation"] and True in space.param_values().get("precise_bn", ()) \
            and spec.evaluation.precise_bn_batches < 1:
        p.add("evaluation.precise_bn_batches", spec.evaluation.precise_bn_batches,
              "must be >= 1 when precise_bn is a factor: the batches PreciseBN recomputes the BN "
              "statistics over")
    if valid["model"] and spec.model.weights and "backbone" in space.param_values():
        p.add("model.weights", spec.model.weights, "is one backbone's weights file; a study that "
              "ablates the backbone cannot load it into every level")
    given = isinstance(raw.get("model"), dict) and "temporal_head" in raw["model"]
    if valid["model"] and given:  # options for some heads only: the others would not compare fairly
        listed = [h.type for h in spec.model.temporal_head]
        for where, head in space.param_levels("temporal_head"):
            if head not in listed:
                p.add(f"{_FACTORS}.{where}", head, f"has no options in model.temporal_head (which "
                      f"lists {', '.join(listed)}): add {{type: {head}, ...}} there")


# ---------------------------------------------------------------------------------------------
# Against this machine: backbones, weights, data
# ---------------------------------------------------------------------------------------------


def _norm_problem(info, norm) -> str | None:
    if norm not in info.norms:
        return (f"is not supported for {info.family} backbones ({info.name}); "
                f"supported: {', '.join(info.norms)}")
    return None


def _frozen_problem(info, k) -> str | None:
    if k > info.num_stages:
        return f"is beyond {info.name}'s {info.num_stages} stages; valid: 0..{info.num_stages}"
    return None


# The model parameters whose values a backbone constrains, each with its check.
BACKBONE_CHECKS = {"norm": _norm_problem, "frozen_stages": _frozen_problem}


def _model_configs(spec: StudySpec) -> Iterator[dict[str, tuple[str, Any]]]:
    """Every combination of the backbone and the parameters it constrains that a trial can get,
    each value with the field that set it: a grid crosses factors (a linked factor's levels stay
    together)."""
    space = spec.search_space
    linked = space.linked
    keys = ("backbone", *BACKBONE_CHECKS)
    axes = []
    for name, levels in space.factors:
        params = linked.get(name, (name,))
        if not levels or not any(k in params for k in keys):
            continue  # no valid level (reported already): the other factors are still checked
        axes.append([{q: (f"{_FACTORS}.{name}[{i}]" + (f".{q}" if name in linked else ""),
                          level[q] if name in linked else level)
                      for q in params if q in keys} for i, level in enumerate(levels)])
    fixed = {"backbone": ("model.backbone", spec.model.backbone)}
    for parts in itertools.product(*axes):
        config = dict(fixed)
        for part in parts:
            config.update(part)
        yield config


def _backbone_problems(spec: StudySpec, p: Problems) -> None:
    from pitfalls.models.backbone import backbone_info

    for config in _model_configs(spec):
        where, name = config["backbone"]
        info = backbone_info(name)
        if info.error:
            p.add(where, name, info.error)
            continue
        for param, check in BACKBONE_CHECKS.items():
            if param in config and (why := check(info, config[param][1])):
                p.add(config[param][0], config[param][1], why)


def _data_problems(spec: StudySpec, p: Problems) -> None:
    from pitfalls.data.base import DataError
    from pitfalls.data.load import anticipation_tools, data_facts

    try:
        facts = data_facts(spec.dataset)
    except DataError as e:
        p.items.extend(f"dataset ({e.source}): {x}" for x in e.problems)
        return
    lengths = facts.train_lengths
    if not lengths:
        p.add("dataset.options.split", None, "has no training videos")
        return
    space, shortest = spec.search_space, min(lengths)
    for where, t in space.param_levels("seq_len"):
        if t > shortest:
            p.add(f"{_FACTORS}.{where}", t, f"is longer than the shortest training video "
                  f"({shortest} frames); valid: 1..{shortest}")
    for where, v in space.param_levels("videos_per_batch"):
        if v > len(lengths):
            p.add(f"{_FACTORS}.{where}", v, f"exceeds the {len(lengths)} training videos "
                  "(sequences in a batch come from distinct videos); valid: "
                  f"1..{len(lengths)}")
    if spec.metric.name.startswith("test_") and not facts.test_videos:
        p.add("metric.name", spec.metric.name, f"needs a test split; dataset {spec.dataset.name} "
              "has none (synthetic: test_videos > 0; cholec80/frames: a split with test videos)")
    if spec.task.name == "anticipation":
        if not facts.tool_names:
            p.add("task.name", "anticipation", f"needs instrument labels; dataset "
                  f"{spec.dataset.name} has none (synthetic: num_tools > 0; frames: tool_columns)")
        for i, t in enumerate(spec.task.tools):
            if t not in facts.tool_names:
                p.add(f"task.tools[{i}]", t, f"is not an instrument of the dataset; "
                      f"{choices(facts.tool_names)}")
        if facts.tool_names and not anticipation_tools(spec.dataset.name, spec.task.tools,
                                                       facts.tool_names):
            p.add("task.tools", [], "the dataset has none of its default instruments to "
                  f"anticipate; name them ({choices(facts.tool_names)})")


def environment_problems(spec: StudySpec, valid: dict[str, bool], p: Problems,
                         check_data: bool = True) -> None:
    """Checks against this machine: the weights file, the backbones, the data."""
    if valid["model"] and spec.model.weights is not None and not Path(spec.model.weights).is_file():
        p.add("model.weights", spec.model.weights, "is not an existing local file (nothing is downloaded)")
    if valid["model"]:
        _backbone_problems(spec, p)
    if check_data and valid["dataset"] and valid["task"]:
        _data_problems(spec, p)

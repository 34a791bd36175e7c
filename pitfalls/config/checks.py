"""The checks that relate sections of a study, and those that need this machine: the dataset's
videos and instruments, the backbones' structure and supported norms, a local weights file,
pretrained weights (a level that would discard them; whether this machine can have them).

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
    mode_problems(spec, valid, p)
    given = isinstance(raw.get("model"), dict) and "temporal_head" in raw["model"]
    if valid["model"] and given:  # options for some heads only: the others would not compare fairly
        listed = [h.type for h in spec.model.temporal_head]
        for where, head in space.param_levels("temporal_head"):
            if head is not None and head not in listed:  # None: a frame_only level's
                p.add(f"{_FACTORS}.{where}", head, f"has no options in model.temporal_head (which "
                      f"lists {', '.join(listed)}): add {{type: {head}, ...}} there")
    if valid["model"] and valid["task"]:  # head options that suit some tasks only
        listed = given and isinstance(raw["model"]["temporal_head"], list)
        for i, head in enumerate(spec.model.temporal_head):
            for q in getattr(head, "task_problems", lambda task: [])(spec.task.name):
                p.add(f"model.temporal_head{f'[{i}]' if listed else ''}.{q.path}", q.value, q.why)
    optimization_problems(spec, valid, p)


def optimization_problems(spec: StudySpec, valid: dict[str, bool], p: Problems) -> None:
    """What the optimization options rule out as meaningless: SGD's momentum swept or sampled
    where no trial it reaches trains with SGD, class weights for a task without phase classes."""
    space = spec.search_space
    met: dict[str, tuple[Any, set]] = {}  # a momentum level's field -> (value, optimizers it meets)
    optimizers: set = set()
    for c in _combinations(spec, "optimizer", "momentum"):
        where, momentum = c["momentum"]
        optimizers.add(c["optimizer"][1])
        if where:
            met.setdefault(where, (momentum, set()))[1].add(c["optimizer"][1])
    plain = f"{_FACTORS}.momentum"
    if any(w.startswith(plain + "[") and "sgd" not in used for w, (_, used) in met.items()):
        # a plain factor meets the same optimizers with every level: one problem for it
        levels = [m for w, (m, _) in met.items() if w.startswith(plain + "[")]
        met = {plain: (levels, optimizers), **{w: v for w, v in met.items() if not w.startswith(plain)}}
    for where, (momentum, used) in met.items():
        if "sgd" not in used:
            p.add(where, momentum, f"is SGD's momentum, but the trials it reaches train with "
                  f"{', '.join(sorted(used))}: add sgd to search_space.factors.optimizer (or pair "
                  "it in a linked level), or drop momentum")
    if "sgd" not in optimizers and any(n == "momentum" for n, _ in space.nuisance):
        p.add("search_space.nuisance.momentum", "momentum", "is SGD's momentum; no trial of this "
              "study trains with optimizer sgd (search_space.factors.optimizer): drop it")
    if valid["task"] and spec.task.name != "phase":
        for where, weighting in space.param_levels("class_weights"):
            if weighting != "none":
                p.add(f"{_FACTORS}.{where}", weighting, f"weighs phase classes; task "
                      f"{spec.task.name} has none (its three classes are set by the horizon, and "
                      "its loss also regresses minutes): class weights apply to task phase only")


def _default(spec: StudySpec, param: str) -> Any:
    """A parameter's default, or None where the section that gives it did not validate (an
    empty `model.temporal_head`: reported by its own check)."""
    try:
        return spec.param_default(param)
    except (IndexError, AttributeError):
        return None


def _combinations(spec: StudySpec, *keys: str) -> Iterator[dict[str, tuple[str, Any]]]:
    """Every combination of the trial parameters `keys` a trial can get, each value with the
    field that set it (a grid crosses factors; a linked factor's levels stay together);
    parameters no factor sets have their default (field None)."""
    space = spec.search_space
    linked = space.linked
    axes = []
    for name, levels in space.factors:
        params = linked.get(name, (name,))
        if levels and any(k in params for k in keys):
            axes.append([{q: (f"{_FACTORS}.{name}[{i}]" + (f".{q}" if name in linked else ""),
                              level[q] if name in linked else level)
                          for q in params if q in keys} for i, level in enumerate(levels)])
    defaults = {k: _default(spec, k) for k in keys}
    for parts in itertools.product(*axes):
        config = {k: (None, defaults[k]) for k in keys}
        for part in parts:
            config.update(part)
        yield config


def mode_problems(spec: StudySpec, valid: dict[str, bool], p: Problems) -> None:
    """What the training modes (`pitfalls.config.modes`) rule out."""
    from pitfalls.config.modes import MODES

    combos = list(_combinations(spec, "training", "carry_hidden", "temporal_head"))
    heads_of_frame_only: dict[str, set] = {}
    for c in combos:
        (where, mode), (carry_where, carry) = c["training"], c["carry_hidden"]
        if mode not in MODES:
            continue  # reported by the level check
        if MODES[mode].frame_batches and carry:
            p.add(carry_where or "search_space.factors.carry_hidden", carry,
                  f"carries a temporal head's state across a video's chunks, in end-to-end "
                  f"training; training {mode} trains its CNN on single frames (remove this "
                  "combination, e.g. with a linked factor)")
        if mode == "two_stage" and valid["resources"] and spec.resources.workers > 1:
            p.add(where or "search_space.factors.training", mode,
                  f"runs in one process (stage 2 trains the head on stored features); "
                  f"resources.workers is {spec.resources.workers}: use 1")
        if not MODES[mode].temporal_head:
            head_where, head = c["temporal_head"]
            same_level = (head_where and where and where.endswith("].training")
                          and head_where == where.removesuffix("training") + "temporal_head")
            if same_level and head is not None:
                p.add(head_where, head, f"training {mode} trains no temporal head: set "
                      "temporal_head: null in this level")
            elif head_where:
                heads_of_frame_only.setdefault(where or "search_space.factors.training", set()).add(head)
    for where, heads in heads_of_frame_only.items():
        if len(heads) > 1:
            p.add(where, "frame_only", f"trains no temporal head: crossed with temporal_head's "
                  f"{len(heads)} levels it would run the same trial {len(heads)} times; pair modes "
                  "and heads in a linked factor instead, e.g. pipeline: [{training: end_to_end, "
                  "temporal_head: lstm}, {training: frame_only}]")
    budget = spec.budget
    if valid["budget"] and (budget.cnn_epochs or budget.cnn_steps_per_epoch) and not any(
            c["training"][1] == "two_stage" for c in combos):
        field = "cnn_epochs" if budget.cnn_epochs else "cnn_steps_per_epoch"
        p.add(f"budget.{field}", getattr(budget, field),
              "is the budget of a two-stage trial's first stage; no trial of this study trains "
              "two_stage (search_space.factors.training)")


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


def _kept_norm_problem(info, norm) -> str | None:
    """Why `norm` cannot start from `info`'s pretrained weights: it replaces their norm layers
    by another kind (their statistics and affine would be lost)."""
    from pitfalls.models.norms import keeping

    kept = keeping(info.norm_kinds)
    if norm in kept or norm not in info.norms:  # an unsupported norm is reported as such
        return None
    valid = [n for n in info.norms if n in kept]
    return (f"replaces the {'/'.join(info.norm_kinds)} norm layers of {info.name}'s pretrained "
            f"weights by {norm} ones, losing their weights; valid for these weights: "
            f"{', '.join(valid) or 'none'} (or set model.reinit_replaced_norms: true to start the "
            "replaced layers from scratch, or pair each norm with a backbone pretrained with it "
            "in a linked factor)")


def _backbone_problems(spec: StudySpec, p: Problems, check_weights: bool) -> None:
    from pitfalls.models.backbone import backbone_info

    model = spec.model
    sources: dict = {}  # where timm gets each backbone's weights -> the field naming it first
    for config in _model_configs(spec):
        where, name = config["backbone"]
        info = backbone_info(name)
        if info.error:
            p.add(where, name, info.error)
            continue
        for param, check in BACKBONE_CHECKS.items():
            if param in config and (why := check(info, config[param][1])):
                p.add(config[param][0], config[param][1], why)
        if not model.pretrained:
            continue
        if info.source is None:
            p.add(where, name, "has no pretrained weights in timm (model.pretrained: true); "
                  "choose a model that has, or set pretrained: false")
            continue
        sources.setdefault(info.source, (where, name))
        if not model.reinit_replaced_norms and "norm" in config \
                and (why := _kept_norm_problem(info, config["norm"][1])):
            p.add(config["norm"][0], config["norm"][1], why)
    if check_weights and sources:
        from pitfalls.models.pretrained import unavailable

        for source, why in unavailable(sources).items():
            where, name = next(v for s, v in sources.items() if s.name == source)
            p.add(where, name, f"needs pretrained weights {source} ({why}): copy a Hugging Face "
                  f"cache that has them here, or make synthetic stand-ins (not ImageNet weights) "
                  f"with `pitfalls pretrain-standin {source} --hf-home DIR`; "
                  "`pitfalls validate --skip-weights` checks the rest")


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
                         check_data: bool = True, check_weights: bool = True) -> None:
    """Checks against this machine: the weights file, the backbones, their pretrained weights
    (unless `check_weights` is false), the data."""
    if valid["model"] and spec.model.weights is not None and not Path(spec.model.weights).is_file():
        p.add("model.weights", spec.model.weights, "is not an existing local file")
    if valid["model"]:
        _backbone_problems(spec, p, check_weights)
    if check_data and valid["dataset"] and valid["task"]:
        _data_problems(spec, p)

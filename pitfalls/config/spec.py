"""The study as frozen config objects: one dataclass per section of a study file.

Each field's annotation says its type and the values it takes (`pitfalls.fields`); its default
is the study file's default. `pitfalls.config.parse` validates a study file into these objects
(every problem at once), and everything below the entry point takes them or explicit arguments.
A class's `problems()` says what no single field can (ranges that relate two fields).

This module imports no torch and no pydantic: the training core builds these objects directly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any

from pitfalls.config.metrics import TASKS, selection_metric
from pitfalls.config.modes import MODES
from pitfalls.config.params import ABLATABLE, DEFAULTS, NUISANCE_DEFAULTS, PARAMS, STUDY_DEFAULTS, TrialParams
from pitfalls.data.load import DATASETS, DatasetSpec
from pitfalls.fields import FORBID_EXTRA, Bool, Float, Int, ListOf, Problem, Tagged, Text, Texts, one_of
from pitfalls.models.heads import HEADS, LSTMHead
from pitfalls.scoring.protocols import PROTOCOLS


@dataclass(frozen=True)
class TaskSpec:
    """What a trial learns: `phase` recognition, or instrument `anticipation` (Rivoir et al.
    2020: minutes until each instrument appears, clipped at `horizon`)."""

    __pydantic_config__ = FORBID_EXTRA

    name: Annotated[str, one_of(*TASKS)] = "phase"
    horizon: Annotated[float, Float(ge=0.001)] = 3.0  # minutes; targets are clipped here and divided by it
    # anticipated instruments; () = the dataset's default set
    tools: Annotated[tuple[str, ...], Texts("must be a list of instrument names")] = ()


# The options each task takes besides its name (a study giving another task's option is refused).
TASK_OPTIONS = {"phase": (), "anticipation": ("horizon", "tools")}


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, run batched on the training device; one draw per sequence
    (all frames of a sequence get the same flip/crop/jitter, as a camera would). 0 = off."""

    __pydantic_config__ = FORBID_EXTRA

    hflip: Annotated[float, Float(ge=0, le=1, message="is a probability: 0..1")] = 0.0
    min_crop: Annotated[float, Float(ge=0.05, le=1, message="is a scale: 0.05..1 (1 = no crop)")] = 1.0
    brightness: Annotated[float, Float(ge=0)] = 0.0  # added offset in [-b, b] (inputs are in [-1, 1])
    contrast: Annotated[float, Float(ge=0, lt=1, message="must be in [0, 1) (factor in [1-c, 1+c])")] = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.min_crop < 1 or self.brightness or self.contrast)


@dataclass(frozen=True)
class PerformanceSpec:
    """How a trial's training step runs on its device (pitfalls.train.fast resolves `auto`).

    Defaults are the fast path where it cannot change the result's meaning: mixed precision and
    channels-last on a GPU (fp32 NCHW on a CPU), cuDNN autotuning. `compile` costs a compile per
    trial (worth it for long trials); `grad_accumulation` splits each step's sequences into that
    many micro-batches (less memory; with BN, smaller normalization batches);
    `activation_checkpointing` recomputes backbone stages in the backward pass (less memory for
    long sequences, ~30% more compute). `prefetch` builds the next training batch in a background
    thread while the step runs (`auto`: on a GPU; same batches, same order). Evaluation runs
    `eval_videos` videos together as lanes in chunks of `eval_chunk` frames (the same metrics;
    more of each fills a GPU, and costs memory; `auto`: 8 x 128 on a GPU, 1 x 64 on a CPU,
    where batching did not pay, docs/benchmarks.md).
    """

    __pydantic_config__ = FORBID_EXTRA

    precision: Annotated[str, one_of("auto", "fp32", "bf16", "fp16")] = "auto"
    channels_last: Annotated[Any, one_of("auto", True, False, message="must be auto, true or false")] = "auto"
    compile: Annotated[bool, Bool()] = False
    cudnn_benchmark: Annotated[bool, Bool()] = True
    grad_accumulation: Annotated[int, Int(ge=1)] = 1
    activation_checkpointing: Annotated[bool, Bool()] = False
    prefetch: Annotated[Any, one_of("auto", True, False, message="must be auto, true or false")] = "auto"
    eval_videos: Annotated[Any, Int(ge=1, auto=True)] = "auto"
    eval_chunk: Annotated[Any, Int(ge=1, auto=True)] = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """The model of every trial, and the defaults of the model parameters a study may sweep
    (`backbone`, `temporal_head`). `temporal_head` lists the options of each head type the
    study uses (a single mapping for one head); the first is the default head.

    `pretrained`: each trial's backbone starts from the weights timm names for it (a tag in the
    name, `resnet50.a1_in1k`, or timm's default), through the Hugging Face cache; inputs are
    normalized with their mean/std. A norm level that replaces the weights' norm layers by
    another kind is refused unless `reinit_replaced_norms` (they then start from scratch).
    `weights`: a local state_dict file instead (inputs and norm conversion as with random
    weights: no input normalization, norms converted carrying their state where shapes agree)."""

    __pydantic_config__ = FORBID_EXTRA

    backbone: Annotated[str, Text(what="a timm model name")] = "test_resnet"
    weights: Annotated[str | None, Text(optional=True)] = None  # local state_dict file
    pretrained: Annotated[bool, Bool()] = False  # timm's pretrained weights (docs/norms.md)
    reinit_replaced_norms: Annotated[bool, Bool()] = False
    temporal_head: Annotated[tuple, Tagged("type", tuple(HEADS.values()), many=True)] = (LSTMHead(),)
    group_norm_groups: Annotated[int, Int(ge=1)] = 8
    whitening_group_size: Annotated[int, Int(ge=1)] = 16  # channels whitened together by iternorm / swbn / dbn

    @property
    def default_head(self) -> str:
        return self.temporal_head[0].type

    def head_options(self, head: str) -> Any:
        """The options of head type `head`: the study's entry, else the head's defaults."""
        return next((h for h in self.temporal_head if h.type == head), None) or HEADS[head]()

    def problems(self) -> list[Problem]:
        seen: list[str] = []
        out = []
        if self.pretrained and self.weights is not None:
            out.append(Problem("weights", self.weights, "and pretrained: true both give the "
                               "backbone's weights; use one", uses=("weights", "pretrained")))
        if self.reinit_replaced_norms and not self.pretrained:
            out.append(Problem("reinit_replaced_norms", True, "applies to pretrained weights "
                               "only (pretrained: true)", uses=("reinit_replaced_norms", "pretrained")))
        for i, head in enumerate(self.temporal_head):
            if head.type in seen:
                out.append(Problem(f"temporal_head[{i}].type", head.type,
                                   "is listed twice; give each head type's options once"))
            seen.append(head.type)
        return out


@dataclass(frozen=True)
class BudgetSpec:
    """Training steps per trial. `epochs` x `steps_per_epoch` is an end-to-end or frame-only
    trial's budget and a two-stage trial's stage 2 (the temporal head on stored features);
    `cnn_epochs` x `cnn_steps_per_epoch` is a two-stage trial's stage 1 (the CNN frame-wise),
    `epochs` and `steps_per_epoch` when not given."""

    __pydantic_config__ = FORBID_EXTRA

    epochs: Annotated[int, Int(ge=1)] = 2
    steps_per_epoch: Annotated[int, Int(ge=1)] = 10
    cnn_epochs: Annotated[int | None, Int(ge=1, optional=True)] = None
    cnn_steps_per_epoch: Annotated[int | None, Int(ge=1, optional=True)] = None

    def stages(self, training: str) -> tuple[tuple[int, int], ...]:
        """(epochs, steps per epoch) of each stage of a trial in training mode `training`."""
        if training == "two_stage":
            return ((self.cnn_epochs or self.epochs, self.cnn_steps_per_epoch or self.steps_per_epoch),
                    (self.epochs, self.steps_per_epoch))
        return ((self.epochs, self.steps_per_epoch),)

    def total_epochs(self, training: str) -> int:
        """Epochs a trial reports (a two-stage trial numbers stage 2's after stage 1's)."""
        return sum(e for e, _ in self.stages(training))


@dataclass(frozen=True)
class EvaluationSpec:
    __pydantic_config__ = FORBID_EXTRA

    precise_bn_batches: Annotated[int, Int(ge=0)] = 0  # >0: recompute BN population statistics before every evaluation
    probes: Annotated[bool, Bool()] = False  # run the pitfall probes after the last epoch; results as probe_* metrics
    # after the last epoch, evaluate videos in training-length chunks with batch vs running BN
    # statistics: {val,train}_err_batchstats, _err_runningstats, _cheat_gap (train/cheat_gap.py)
    cheat_gap: Annotated[bool, Bool()] = False
    # the checkpoint evaluated on the test split: the epoch best on validation (ties: the earlier)
    # by the study's metric (its val_ counterpart), or the last epoch
    select: Annotated[str, one_of("best", "last")] = "best"
    # how phase metrics are computed: the M2CAI16/Cholec80 scripts exactly, or with their bugs
    # fixed (pitfalls.scoring.protocols, docs/evaluation.md)
    protocol: Annotated[str, one_of(*PROTOCOLS)] = "matlab"
    predictions: Annotated[bool, Bool()] = True  # write val/test predictions of the selected checkpoint


@dataclass(frozen=True)
class ResourceSpec:
    __pydantic_config__ = FORBID_EXTRA

    workers: Annotated[int, Int(ge=1)] = 1
    cpus_per_worker: Annotated[float, Float(ge=0.01)] = 1.0
    gpus_per_worker: Annotated[float, Float(ge=0)] = 0.0


@dataclass(frozen=True)
class FaultToleranceSpec:
    """Retries and checkpoints. A trial checkpoints after every epoch; a retried or resumed
    trial continues from its last checkpoint instead of starting over."""

    __pydantic_config__ = FORBID_EXTRA

    trial_retries: Annotated[int, Int(ge=0)] = 1  # Tune: rerun a failed trial from its checkpoint this many times
    # Ray Train: restart a multi-worker trial's worker group (e.g. a node lost)
    worker_retries: Annotated[int, Int(ge=0)] = 2
    keep_checkpoints: Annotated[int, Int(ge=1)] = 1  # per trial; a resnet50 + AdamW checkpoint is ~300 MB


@dataclass(frozen=True)
class SearcherSpec:
    __pydantic_config__ = FORBID_EXTRA

    type: Annotated[str, one_of("grid", "optuna")] = "grid"
    sampler: Annotated[str, one_of("tpe", "random", "brute_force")] = "tpe"
    num_samples: Annotated[int, Int(ge=1)] = 1
    seed: Annotated[int, Int(ge=0)] = 0


@dataclass(frozen=True)
class MetricSpec:
    name: str = "val_accuracy"
    mode: str = "max"

    @property
    def selection(self) -> str:
        """What Tune optimizes and checkpoints are selected by: the validation metric (the
        study's own, or the val_ counterpart of a test_ metric)."""
        return selection_metric(self.name)


@dataclass(frozen=True)
class Distribution:
    """A sampled nuisance parameter. `default` is its value in grid (ablation) studies."""

    __pydantic_config__ = FORBID_EXTRA

    distribution: Annotated[str, one_of("uniform", "loguniform", "int", "choice")]
    low: Annotated[float | None, Float(optional=True)] = None
    high: Annotated[float | None, Float(optional=True)] = None
    choices: Annotated[tuple, ListOf("must be a non-empty list")] = ()
    default: Any = None

    def problems(self) -> list[Problem]:
        return [replace(x, uses=_DISTRIBUTION_FIELDS) for x in self._problems()]

    def _problems(self) -> list[Problem]:
        if self.distribution == "choice":
            if not self.choices:
                return [Problem("choices", list(self.choices), "must be a non-empty list")]
            if self.default is not None and self.default not in self.choices:
                return [Problem("default", self.default, "is not one of the choices")]
            return []
        out = [Problem(k, v, "must be a number") for k, v in (("low", self.low), ("high", self.high))
               if v is None]
        if out:
            return out
        if not self.low < self.high:
            return [Problem("high", self.high, f"must be greater than low ({self.low:g})")]
        if self.distribution == "loguniform" and self.low <= 0:
            return [Problem("low", self.low, "must be > 0 for loguniform")]
        if self.distribution == "int" and not (self.low.is_integer() and self.high.is_integer()):
            return [Problem("low", self.low, "an int distribution's low and high must be integers")]
        if self.default is not None and not (isinstance(self.default, (int, float))
                                             and not isinstance(self.default, bool)
                                             and self.low <= self.default <= self.high):
            return [Problem("default", self.default,
                            f"must lie in [low, high] = [{self.low:g}, {self.high:g}]")]
        return []


_DISTRIBUTION_FIELDS = ("distribution", "low", "high", "choices", "default")


def level_label(level: Mapping[str, Any]) -> str:
    """A linked factor's level as one value: `videos_per_batch=1, seq_len=64`. Tune and Optuna
    see this label (a categorical choice must be a plain value); trials get the parameters."""
    return ", ".join(f"{k}={v}" for k, v in level.items())


@dataclass(frozen=True)
class SearchSpace:
    """Factors in study order. A plain factor is a trial parameter with its levels; a linked
    factor has its own name and levels that are mappings, each setting several parameters
    together (e.g. `batch_shape: [{videos_per_batch: 1, seq_len: 64}, ...]`)."""

    name: str
    factors: tuple[tuple[str, tuple], ...]  # ordered (name, levels)
    nuisance: tuple[tuple[str, Distribution], ...]

    @property
    def factor_dict(self) -> dict[str, tuple]:
        return dict(self.factors)

    @property
    def varied_factors(self) -> list[str]:
        """Factors with more than one level: the columns of a comparison table."""
        return [n for n, levels in self.factors if len(levels) > 1]

    @property
    def linked(self) -> dict[str, tuple[str, ...]]:
        """Linked factors: name -> the trial parameters each of its levels sets."""
        return {n: tuple(levels[0]) for n, levels in self.factors
                if n not in ABLATABLE and levels and isinstance(levels[0], dict)}

    @property
    def varied_params(self) -> list[str]:
        """The trial parameters that vary, a linked factor's in its place (run names, progress)."""
        linked = self.linked
        return [q for n in self.varied_factors for q in linked.get(n, (n,))]

    def param_levels(self, param: str) -> list[tuple[str, Any]]:
        """Every value trial parameter `param` takes from a plain or a linked factor, with its
        field under `search_space.factors` (`seq_len[1]`, `batch_shape[0].seq_len`)."""
        out = []
        for n, levels in self.factors:
            if n == param:
                out += [(f"{n}[{i}]", v) for i, v in enumerate(levels)]
            elif param in self.linked.get(n, ()):
                out += [(f"{n}[{i}].{param}", level[param]) for i, level in enumerate(levels)]
        return out

    def param_values(self) -> dict[str, tuple]:
        """Per swept trial parameter, the distinct values it takes (plain or linked)."""
        linked = self.linked
        out: dict[str, tuple] = {}
        for param in (q for n, _ in self.factors for q in linked.get(n, (n,))):
            values: list = []
            for _, v in self.param_levels(param):
                if not any(v == w and type(v) is type(w) for w in values):
                    values.append(v)
            out[param] = tuple(values)
        return out

    def expand(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A Tune config -> the flat trial parameters: each linked factor's label is replaced by
        the parameters its level sets."""
        out = dict(config)
        for n in self.linked:
            if n in out:
                label = out.pop(n)
                levels = {level_label(level): level for level in self.factor_dict[n]}
                if label not in levels:
                    raise KeyError(f"{n}: {label!r} is not one of its levels; valid choices: "
                                   + ", ".join(levels))
                out.update(levels[label])
        return out


@dataclass(frozen=True)
class StudySpec:
    name: str
    dataset: DatasetSpec
    task: TaskSpec
    model: ModelSpec
    budget: BudgetSpec
    resources: ResourceSpec
    searcher: SearcherSpec
    seeds: tuple[int, ...]
    metric: MetricSpec
    search_space: SearchSpace
    description: str = ""
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    augmentation: AugmentSpec = field(default_factory=AugmentSpec)
    fault_tolerance: FaultToleranceSpec = field(default_factory=FaultToleranceSpec)
    performance: PerformanceSpec = field(default_factory=PerformanceSpec)

    @property
    def num_trials(self) -> int:
        if self.searcher.type == "grid":
            return math.prod(len(v) for _, v in self.search_space.factors) * len(self.seeds)
        return self.searcher.num_samples

    def param_default(self, name: str) -> Any:
        """A trial parameter's value where the search space does not set it: its declared
        default, or the study field its declaration names (`model.backbone`)."""
        where = STUDY_DEFAULTS.get(name)
        return functools.reduce(getattr, where.split("."), self) if where else DEFAULTS[name]

    def trial_params(self, config: Mapping[str, Any]) -> TrialParams:
        """A Tune config (factors, sampled nuisance, seed) -> the trial's full parameters."""
        return TrialConfig(self, TrialParams.from_dict(self.search_space.expand(config))).params

    def recorded_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's parameters as its results row records them: a parameter no factor sets and
        whose value alone means nothing (`precise_bn`: the study's evaluation decides) is null."""
        flat = self.search_space.expand(config)
        return {n: v if n in flat or PARAMS[n].record_fixed else None
                for n, v in self.trial_params(config).as_dict().items()}

    def to_dict(self) -> dict:
        """The resolved study in the study-file shape, search space inlined; parses back as-is."""
        searcher = asdict(self.searcher)
        if self.searcher.type == "grid":
            searcher.pop("num_samples")
        heads = [asdict(h) for h in self.model.temporal_head]
        task = {"name": self.task.name, **{k: _plain_value(getattr(self.task, k))
                                           for k in TASK_OPTIONS[self.task.name]}}
        return {
            "name": self.name,
            "description": self.description,
            "dataset": {"name": self.dataset.name, "options": _plain(asdict(self.dataset.options))},
            "task": task,
            "augmentation": asdict(self.augmentation),
            "fault_tolerance": asdict(self.fault_tolerance),
            "performance": asdict(self.performance),
            "model": {
                "backbone": self.model.backbone,
                "weights": self.model.weights,
                "pretrained": self.model.pretrained,
                "reinit_replaced_norms": self.model.reinit_replaced_norms,
                "temporal_head": heads[0] if len(heads) == 1 else heads,
                "group_norm_groups": self.model.group_norm_groups,
                "whitening_group_size": self.model.whitening_group_size,
            },
            "budget": asdict(self.budget),
            "evaluation": asdict(self.evaluation),
            "resources": asdict(self.resources),
            "searcher": searcher,
            "seeds": list(self.seeds),
            "metric": asdict(self.metric),
            "search_space": {
                "name": self.search_space.name,
                "factors": {n: [dict(x) if isinstance(x, dict) else x for x in v]
                            for n, v in self.search_space.factors},
                "nuisance": {
                    n: {k: _plain_value(v) for k, v in asdict(dist).items() if v not in (None, ())}
                    for n, dist in self.search_space.nuisance
                },
            },
        }


def _plain_value(v: Any) -> Any:
    """Tuples (of pairs) back to YAML lists."""
    return [_plain_value(x) for x in v] if isinstance(v, tuple) else v


def _plain(d: dict) -> dict:
    """Options fields -> YAML-friendly values: a split's ((part, ids), ...) back to a mapping."""
    out = {}
    for k, v in d.items():
        if v is None:
            continue
        if k == "split" and isinstance(v, tuple):
            v = {name: list(ids) for name, ids in v}
        out[k] = _plain_value(v)
    return out


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial's training needs: the study's fixed parts plus its parameters.
    Parameters left None take the study's values (`StudySpec.param_default`)."""

    study: StudySpec
    params: TrialParams

    def __post_init__(self) -> None:
        unset = {n: self.study.param_default(n) for n in STUDY_DEFAULTS
                 if getattr(self.params, n) is None}
        if not MODES[self.params.training].temporal_head:  # frame_only: no temporal head at all
            unset["temporal_head"] = None
        if unset:
            object.__setattr__(self, "params", replace(self.params, **unset))

    @property
    def epochs(self) -> int:
        """The epochs this trial reports (both stages of a two-stage trial)."""
        return self.study.budget.total_epochs(self.params.training)


def study_precise_bn_batches(study: StudySpec, precise_bn: bool) -> int:
    """Batches PreciseBN recomputes BN statistics over before each evaluation, for a trial whose
    `precise_bn` parameter is given (it decides only when it is a factor): the trial and the
    planner decide alike."""
    batches = study.evaluation.precise_bn_batches
    if "precise_bn" in study.search_space.param_values():
        return batches if precise_bn else 0
    return batches


def precise_bn_batches(cfg: TrialConfig) -> int:
    """Batches PreciseBN recomputes BN statistics over before each evaluation (0: the EMA)."""
    return study_precise_bn_batches(cfg.study, cfg.params.precise_bn)


__all__ = ["AugmentSpec", "BudgetSpec", "DATASETS", "DatasetSpec", "Distribution",
           "EvaluationSpec", "FaultToleranceSpec", "MetricSpec", "ModelSpec", "NUISANCE_DEFAULTS",
           "PerformanceSpec", "ResourceSpec", "SearchSpace", "SearcherSpec", "StudySpec",
           "TASK_OPTIONS", "TaskSpec", "TrialConfig", "level_label", "precise_bn_batches",
           "study_precise_bn_batches"]

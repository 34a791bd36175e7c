"""Study files -> validated, frozen config objects.

A study YAML is parsed exactly once, at the entry point, into a `StudySpec`. Everything below
(sweep, train loop, models) takes these objects or explicit arguments, never raw dicts. Validation
collects *every* problem and raises one `StudyError` listing them (field path, bad value, valid
choices) before any Ray, MLflow or training work starts.

This module imports no Ray, Optuna or MLflow. It imports torch (through the norm catalog); the
checks that need the backbone's structure import timm lazily.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from pitfalls.data.synthetic import SyntheticOptions, video_lengths
from pitfalls.models.norms import NORM_NAMES

CORE_FACTORS = ("norm", "frozen_stages", "seq_len", "videos_per_batch")
# Trial parameters that may be ablated (factor) or sampled (nuisance), with their types.
TRIAL_PARAMS: dict[str, type] = {
    "norm": str,
    "frozen_stages": int,
    "seq_len": int,
    "videos_per_batch": int,
    "carry_hidden": bool,
    "precise_bn": bool,
    "lr": float,
    "weight_decay": float,
}
OPTIONAL_FACTORS = ("carry_hidden", "precise_bn")  # a study may sweep them; else at their default
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TASKS = ("phase", "anticipation")
DATASETS = ("synthetic", "cholec80", "frames")
TEMPORAL_HEADS = ("lstm",)
SEARCHERS = ("grid", "optuna")
OPTUNA_SAMPLERS = ("tpe", "random", "brute_force")
# Metrics per task, with the direction that is better.
TASK_METRICS: dict[str, dict[str, str]] = {
    "phase": {"val_accuracy": "max", "val_f1": "max", "val_precision": "max", "val_recall": "max",
              "val_jaccard": "max", "val_loss": "min", "train_loss": "min"},
    "anticipation": {"val_wMAE": "min", "val_inMAE": "min", "val_outMAE": "min", "val_eMAE": "min",
                     "val_loss": "min", "train_loss": "min"},
}
# Measured after the last epoch with evaluation.cheat_gap (any task); in results, not a study metric.
CHEAT_GAP_METRICS = {f"{split}_{name}": "min" for split in ("val", "train")
                     for name in ("err_batchstats", "err_runningstats", "cheat_gap")}
DEFAULT_METRIC = {"phase": "val_accuracy", "anticipation": "val_wMAE"}
METRICS = tuple(dict.fromkeys([*(m for ms in TASK_METRICS.values() for m in ms), *CHEAT_GAP_METRICS]))
MODES = ("max", "min")


class StudyError(ValueError):
    """Every problem found in a study definition, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


# ---------------------------------------------------------------------------------------------
# Frozen config objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cholec80Options:
    """Cholec80 as distributed (frames extracted at `fps`), or its packed store."""

    root: str | None = None  # the dataset folder (frames/, phase_annotations/, tool_annotations/)
    store: str | None = None  # a packed store (`pitfalls data pack`): read instead of decoding
    split: str | tuple = "40/8/32"  # a standard split's name, or ((split, (video ids...)), ...)
    frame_size: tuple[int, int] = (384, 216)  # (W, H) the frames are resized to
    fps: float = 1.0


@dataclass(frozen=True)
class FramesOptions:
    """One folder of frames per video plus a CSV/Parquet file of per-frame labels."""

    root: str | None = None
    store: str | None = None
    labels: str = "labels.csv"  # relative to root
    video_column: str = "video"
    frame_column: str = "frame"
    phase_column: str = "phase"
    tool_columns: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()  # class order; default: sorted label values
    split: tuple | None = None  # ((split, (video names...)), ...); None: the labels' split column
    frame_size: tuple[int, int] = (224, 224)
    fps: float = 1.0


DATASET_OPTIONS = {"synthetic": SyntheticOptions, "cholec80": Cholec80Options,
                   "frames": FramesOptions}


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "synthetic"
    options: SyntheticOptions | Cholec80Options | FramesOptions = field(
        default_factory=SyntheticOptions)


@dataclass(frozen=True)
class TaskSpec:
    name: str = "phase"
    horizon: float = 3.0  # anticipation: minutes; targets are clipped here and divided by it
    tools: tuple[str, ...] = ()  # anticipated instruments; () = the dataset's default set


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, run batched on the training device; one draw per sequence
    (all frames of a sequence get the same flip/crop/jitter, as a camera would). 0 = off."""

    hflip: float = 0.0  # probability of a horizontal flip
    min_crop: float = 1.0  # random crop of scale in [min_crop, 1], resized back
    brightness: float = 0.0  # added offset in [-b, b] (inputs are in [-1, 1])
    contrast: float = 0.0  # factor in [1 - c, 1 + c] around each frame's mean

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.min_crop < 1 or self.brightness or self.contrast)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PerformanceSpec:
    """How a trial's training step runs on its device (pitfalls.train.fast resolves `auto`).

    Defaults are the fast path where it cannot change the result's meaning: mixed precision and
    channels-last on a GPU (fp32 NCHW on a CPU), cuDNN autotuning. `compile` costs a compile per
    trial (worth it for long trials); `grad_accumulation` splits each step's sequences into that
    many micro-batches (less memory; with BN, smaller normalization batches);
    `activation_checkpointing` recomputes backbone stages in the backward pass (less memory for
    long sequences, ~30% more compute).
    """

    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: Any = "auto"  # auto | true | false
    compile: bool = False
    cudnn_benchmark: bool = True
    grad_accumulation: int = 1
    activation_checkpointing: bool = False


@dataclass(frozen=True)
class ModelSpec:
    backbone: str = "test_resnet"
    weights: str | None = None  # local state_dict file; nothing is ever downloaded
    temporal_head: str = "lstm"
    hidden_size: int = 64
    group_norm_groups: int = 8
    whitening_group_size: int = 16  # channels whitened together by iternorm / swbn / dbn


@dataclass(frozen=True)
class BudgetSpec:
    epochs: int = 2
    steps_per_epoch: int = 10


@dataclass(frozen=True)
class EvaluationSpec:
    precise_bn_batches: int = 0  # >0: recompute BN population statistics before every evaluation
    probes: bool = False  # run the pitfall probes after the last epoch; results as probe_* metrics
    # after the last epoch, evaluate videos in training-length chunks with batch vs running BN
    # statistics: {val,train}_err_batchstats, _err_runningstats, _cheat_gap (train/cheat_gap.py)
    cheat_gap: bool = False


@dataclass(frozen=True)
class ResourceSpec:
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class FaultToleranceSpec:
    """Retries and checkpoints. A trial checkpoints after every epoch; a retried or resumed
    trial continues from its last checkpoint instead of starting over."""

    trial_retries: int = 1  # Tune: rerun a failed trial from its checkpoint this many times
    worker_retries: int = 2  # Ray Train: restart a multi-worker trial's worker group (e.g. a node lost)
    keep_checkpoints: int = 1  # per trial; a resnet50 + AdamW checkpoint is ~300 MB


@dataclass(frozen=True)
class SearcherSpec:
    type: str = "grid"
    sampler: str = "tpe"
    num_samples: int = 1
    seed: int = 0


@dataclass(frozen=True)
class MetricSpec:
    name: str = "val_accuracy"
    mode: str = "max"


@dataclass(frozen=True)
class Distribution:
    """A sampled nuisance parameter. `default` is its value in grid (ablation) studies."""

    distribution: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    default: Any = None


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
                if n not in TRIAL_PARAMS and levels and isinstance(levels[0], dict)}

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
                    raise KeyError(f"{n}: {label!r} is not one of its levels; "
                                   f"{_choices(levels)}")
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

    def to_dict(self) -> dict:
        """The resolved study in the study-file shape, search space inlined; parses back as-is."""
        searcher = asdict(self.searcher)
        if self.searcher.type == "grid":
            searcher.pop("num_samples")
        return {
            "name": self.name,
            "description": self.description,
            "dataset": {"name": self.dataset.name, "options": _plain(asdict(self.dataset.options))},
            "task": ({"name": "phase"} if self.task.name == "phase" else _plain(asdict(self.task))),
            "augmentation": asdict(self.augmentation),
            "fault_tolerance": asdict(self.fault_tolerance),
            "performance": asdict(self.performance),
            "model": {
                "backbone": self.model.backbone,
                "weights": self.model.weights,
                "temporal_head": {"type": self.model.temporal_head,
                                  "hidden_size": self.model.hidden_size},
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
                    n: {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in asdict(dist).items() if v not in (None, ())}
                    for n, dist in self.search_space.nuisance
                },
            },
        }


def _plain(d: dict) -> dict:
    """Config dataclass fields -> YAML-friendly values (tuples of pairs back to mappings)."""
    out = {}
    for k, v in d.items():
        if v is None:
            continue
        if k == "split" and isinstance(v, tuple):
            v = {name: list(ids) for name, ids in v}
        elif k == "shared_looks":
            v = [list(pair) for pair in v]
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


@dataclass(frozen=True)
class TrialParams:
    """The flat per-trial parameters: exactly what MLflow records and the results table keys."""

    norm: str
    frozen_stages: int
    seq_len: int
    videos_per_batch: int
    lr: float
    weight_decay: float
    seed: int
    carry_hidden: bool = False  # carry the LSTM state (detached) across consecutive chunks
    # as a factor: PreciseBN (evaluation.precise_bn_batches) vs the EMA running statistics; when
    # not swept, evaluation.precise_bn_batches alone decides (see `precise_bn_batches`)
    precise_bn: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialParams":
        return cls(**{f.name: TRIAL_PARAM_TYPES[f.name](d[f.name]) for f in fields(cls)
                      if f.name in d or f.name not in PARAM_DEFAULTS})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TRIAL_PARAM_TYPES: dict[str, type] = {**TRIAL_PARAMS, "seed": int}
NUISANCE_FALLBACKS = {"lr": 1e-3, "weight_decay": 1e-4}
PARAM_DEFAULTS = {"carry_hidden": False, "precise_bn": False}  # optional factors when not swept


def precise_bn_batches(cfg: "TrialConfig") -> int:
    """Batches PreciseBN recomputes BN statistics over before each evaluation (0: the EMA)."""
    return study_precise_bn_batches(cfg.study, cfg.params.precise_bn)


def study_precise_bn_batches(study: "StudySpec", precise_bn: bool) -> int:
    """`precise_bn_batches` for a configuration whose `precise_bn` parameter is given (ignored
    unless precise_bn is a factor): the trial and the planner decide alike."""
    batches = study.evaluation.precise_bn_batches
    if "precise_bn" in study.search_space.param_values():
        return batches if precise_bn else 0
    return batches


def parse_param(name: str, text: str) -> Any:
    """A trial parameter from its string form (MLflow stores params as strings)."""
    if TRIAL_PARAM_TYPES[name] is bool:
        return text.strip().lower() in ("true", "1")
    return TRIAL_PARAM_TYPES[name](text)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial's training needs: the study's fixed parts plus its parameters."""

    study: StudySpec
    params: TrialParams


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, value: Any, why: str) -> None:
        self.items.append(f"{path}: {value!r} {why}")


def _choices(options: Iterable) -> str:
    return "valid choices: " + ", ".join(map(str, options))


def _mapping(raw: Any, path: str, p: _Problems) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        p.add(path, raw, "must be a mapping")
        return {}
    return raw


def _unknown_keys(raw: dict, allowed: Iterable[str], path: str, p: _Problems) -> None:
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            p.add(f"{path}.{key}" if path else key, key, f"is not a known field; {_choices(allowed)}")


def _number(raw: dict, key: str, path: str, p: _Problems, default, kind=int, minimum=None):
    value = raw.get(key, default)
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    if not ok_type:
        p.add(f"{path}.{key}", value, f"must be {'an integer' if kind is int else 'a number'}")
        return default
    if minimum is not None and value < minimum:
        p.add(f"{path}.{key}", value, f"must be >= {minimum}")
        return default
    return kind(value)


def _dataclass_from(cls, raw: dict, path: str, p: _Problems, minimums: Mapping[str, float]):
    """Build a flat dataclass of numbers/strings from a mapping, checking names and types."""
    _unknown_keys(raw, [f.name for f in fields(cls)], path, p)
    values = {}
    defaults = cls()
    for f in fields(cls):
        default = getattr(defaults, f.name)
        if f.name not in raw:
            values[f.name] = default
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kind = int if isinstance(default, int) else float
            values[f.name] = _number(raw, f.name, path, p, default, kind, minimums.get(f.name))
        else:
            values[f.name] = raw[f.name]
    return cls(**values)


def _parse_dataset(raw: Any, p: _Problems) -> DatasetSpec:
    raw = _mapping(raw, "dataset", p)
    _unknown_keys(raw, ["name", "options"], "dataset", p)
    name = raw.get("name", "synthetic")
    if name not in DATASETS:
        p.add("dataset.name", name, f"is not a known dataset; {_choices(DATASETS)}")
        return DatasetSpec()
    opts = _mapping(raw.get("options"), "dataset.options", p)
    if name == "synthetic":
        return DatasetSpec(name=name, options=_parse_synthetic(opts, p))
    return DatasetSpec(name=name, options=_parse_real_dataset(name, opts, p))


def _parse_synthetic(opts: dict, p: _Problems) -> SyntheticOptions:
    opts = dict(opts)
    shared = opts.pop("shared_looks", [])
    options = _dataclass_from(
        SyntheticOptions, opts, "dataset.options", p,
        minimums={"num_videos": 2, "val_videos": 1, "num_phases": 2, "num_tools": 0,
                  "min_phase_frames": 1, "max_phase_frames": 1, "frame_size": 16, "noise": 0.0},
    )
    options = replace(options, shared_looks=_parse_shared_looks(shared, options.num_phases, p))
    if options.max_phase_frames < options.min_phase_frames:
        p.add("dataset.options.max_phase_frames", options.max_phase_frames,
              f"must be >= min_phase_frames ({options.min_phase_frames})")
    if options.val_videos >= options.num_videos:
        p.add("dataset.options.val_videos", options.val_videos,
              f"must leave at least one training video (num_videos is {options.num_videos})")
    return options


def _parse_shared_looks(raw: Any, num_phases: int, p: _Problems) -> tuple[tuple[int, int], ...]:
    """[[phase, like], ...]: each a later phase rendered like an earlier, unshared one."""
    path = "dataset.options.shared_looks"
    if not isinstance(raw, list):
        p.add(path, raw, "must be a list of [phase, like] pairs, e.g. [[4, 2]]")
        return ()
    pairs: list[tuple[int, int]] = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in pair)):
            p.add(f"{path}[{i}]", pair, "must be a pair of phase numbers [phase, like]")
        elif not 1 <= pair[1] < pair[0] <= num_phases:
            p.add(f"{path}[{i}]", pair, f"must name a phase and an earlier phase it looks like, "
                  f"both in 1..{num_phases} (num_phases)")
        else:
            pairs.append((pair[0], pair[1]))
    shared = [a for a, _ in pairs]
    for i, (a, b) in enumerate(pairs):
        if shared.count(a) > 1:
            p.add(f"{path}[{i}]", [a, b], f"phase {a} is given more than one look")
        elif b in shared:
            p.add(f"{path}[{i}]", [a, b], f"phase {b} is itself rendered like another phase; "
                  "name the original one")
    return tuple(pairs)


def _parse_real_dataset(name: str, opts: dict, p: _Problems) -> Cholec80Options | FramesOptions:
    """cholec80 / frames options: paths, split, frame size; the files are checked later."""
    cls = DATASET_OPTIONS[name]
    path = "dataset.options"
    _unknown_keys(opts, [f.name for f in fields(cls)], path, p)
    values: dict[str, Any] = {}
    for key in ("root", "store", "labels", "video_column", "frame_column", "phase_column"):
        if key in opts and key in {f.name for f in fields(cls)}:
            if not isinstance(opts[key], str) or not opts[key]:
                p.add(f"{path}.{key}", opts[key], "must be a non-empty string")
            else:
                values[key] = opts[key]
    if not values.get("root") and not values.get("store"):
        p.add(f"{path}.root", None, f"is required for {name} (or `store`: a packed store from "
              "`pitfalls data pack`)")
    for key in ("tool_columns", "phases"):
        if key in opts:
            v = opts[key]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                p.add(f"{path}.{key}", v, "must be a list of strings")
            else:
                values[key] = tuple(v)
    if "frame_size" in opts:
        v = opts["frame_size"]
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 8 for x in v)):
            p.add(f"{path}.frame_size", v, "must be [width, height], integers >= 8")
        else:
            values["frame_size"] = tuple(v)
    if "fps" in opts:
        values["fps"] = _number(opts, "fps", path, p, 1.0, float, 0.001)
    if "split" in opts:
        values["split"] = _parse_split(name, opts["split"], p)
    return cls(**values)


def _parse_split(name: str, raw: Any, p: _Problems):
    """A standard split's name (cholec80) or a mapping split -> list of video ids."""
    path = "dataset.options.split"
    standard = ("40/8/32", "32/8/40") if name == "cholec80" else ()
    if isinstance(raw, str) and raw in standard:
        return raw
    if not isinstance(raw, dict):
        valid = (", ".join(standard) + " or " if standard else "") + "a mapping {train: [...], val: [...], test: [...]}"
        p.add(path, raw, f"is not a split; valid: {valid}")
        return standard[0] if standard else None
    _unknown_keys(raw, ["train", "val", "test"], path, p)
    kind = int if name == "cholec80" else str
    out = []
    for split, ids in raw.items():
        if not isinstance(ids, list) or not all(isinstance(i, kind) and not isinstance(i, bool) for i in ids):
            p.add(f"{path}.{split}", ids, f"must be a list of video {'ids (integers)' if kind is int else 'names'}")
            continue
        out.append((split, tuple(ids)))
    for required in ("train", "val"):
        if required not in raw:
            p.add(f"{path}.{required}", None, "is required (a list of videos)")
    return tuple(out)


def _parse_task(raw: Any, p: _Problems) -> TaskSpec:
    if raw is None or isinstance(raw, str):
        if raw is not None and raw not in TASKS:
            p.add("task", raw, _choices(TASKS))
            return TaskSpec()
        raw = {"name": raw or "phase"}
    raw = _mapping(raw, "task", p)
    _unknown_keys(raw, ["name", "horizon", "tools"], "task", p)
    name = raw.get("name", "phase")
    if name not in TASKS:
        p.add("task.name", name, _choices(TASKS))
        name = "phase"
    if name == "phase":
        for key in ("horizon", "tools"):
            if key in raw:
                p.add(f"task.{key}", raw[key], "applies to task anticipation only")
        return TaskSpec()
    horizon = _number(raw, "horizon", "task", p, TaskSpec.horizon, float, 0.001)
    tools = raw.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        p.add("task.tools", tools, "must be a list of instrument names")
        tools = []
    return TaskSpec(name=name, horizon=horizon, tools=tuple(tools))


def _parse_augmentation(raw: Any, p: _Problems) -> AugmentSpec:
    spec = _dataclass_from(AugmentSpec, _mapping(raw, "augmentation", p), "augmentation", p,
                           {"hflip": 0.0, "min_crop": 0.05, "brightness": 0.0, "contrast": 0.0})
    if spec.hflip > 1:
        p.add("augmentation.hflip", spec.hflip, "is a probability: 0..1")
    if spec.min_crop > 1:
        p.add("augmentation.min_crop", spec.min_crop, "is a scale: 0.05..1 (1 = no crop)")
    if spec.contrast >= 1:
        p.add("augmentation.contrast", spec.contrast, "must be < 1 (factor in [1-c, 1+c])")
    return spec


def _parse_performance(raw: Any, resources: "ResourceSpec", p: _Problems) -> PerformanceSpec:
    spec = _dataclass_from(PerformanceSpec, _mapping(raw, "performance", p), "performance", p,
                           {"grad_accumulation": 1})
    if spec.precision not in PRECISIONS:
        p.add("performance.precision", spec.precision, _choices(PRECISIONS))
    elif spec.precision == "fp16" and not resources.gpus_per_worker:
        p.add("performance.precision", spec.precision,
              "needs GPUs (resources.gpus_per_worker): fp16 trains with CUDA loss scaling; "
              "use bf16 or fp32 on CPUs")
    if spec.channels_last != "auto" and not isinstance(spec.channels_last, bool):
        p.add("performance.channels_last", spec.channels_last, "must be auto, true or false")
    for name in ("compile", "cudnn_benchmark", "activation_checkpointing"):
        if not isinstance(getattr(spec, name), bool):
            p.add(f"performance.{name}", getattr(spec, name), "must be true or false")
    return spec


def _parse_model(raw: Any, p: _Problems, check_files: bool = True) -> ModelSpec:
    raw = _mapping(raw, "model", p)
    _unknown_keys(raw, ["backbone", "weights", "temporal_head", "group_norm_groups",
                       "whitening_group_size"], "model", p)
    backbone = raw.get("backbone", ModelSpec.backbone)
    if not isinstance(backbone, str):
        p.add("model.backbone", backbone, "must be a timm model name")
        backbone = ModelSpec.backbone
    weights = raw.get("weights")
    if weights is not None and check_files and not Path(str(weights)).is_file():
        p.add("model.weights", weights, "is not an existing local file (nothing is downloaded)")
    head = _mapping(raw.get("temporal_head"), "model.temporal_head", p)
    _unknown_keys(head, ["type", "hidden_size"], "model.temporal_head", p)
    head_type = head.get("type", "lstm")
    if head_type not in TEMPORAL_HEADS:
        p.add("model.temporal_head.type", head_type, _choices(TEMPORAL_HEADS))
    hidden = _number(head, "hidden_size", "model.temporal_head", p, ModelSpec.hidden_size, int, 1)
    groups = _number(raw, "group_norm_groups", "model", p, ModelSpec.group_norm_groups, int, 1)
    wgs = _number(raw, "whitening_group_size", "model", p, ModelSpec.whitening_group_size, int, 1)
    return ModelSpec(backbone=backbone, weights=weights, temporal_head=head_type,
                     hidden_size=hidden, group_norm_groups=groups, whitening_group_size=wgs)


def _parse_searcher(raw: Any, p: _Problems) -> SearcherSpec:
    raw = _mapping(raw, "searcher", p)
    spec = _dataclass_from(SearcherSpec, raw, "searcher", p, minimums={"num_samples": 1})
    if spec.type not in SEARCHERS:
        p.add("searcher.type", spec.type, _choices(SEARCHERS))
    if spec.sampler not in OPTUNA_SAMPLERS:
        p.add("searcher.sampler", spec.sampler, _choices(OPTUNA_SAMPLERS))
    if spec.type == "grid" and "num_samples" in raw:
        p.add("searcher.num_samples", spec.num_samples,
              "applies to optuna only; a grid study runs every factor combination once per seed")
    return spec


def _parse_distribution(name: str, raw: Any, path: str, p: _Problems) -> Distribution | None:
    raw = _mapping(raw, path, p)
    _unknown_keys(raw, ["distribution", "low", "high", "choices", "default"], path, p)
    kind = raw.get("distribution")
    if kind not in DISTRIBUTIONS:
        p.add(f"{path}.distribution", kind, _choices(DISTRIBUTIONS))
        return None
    default = raw.get("default", NUISANCE_FALLBACKS.get(name))
    if kind == "choice":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            p.add(f"{path}.choices", choices, "must be a non-empty list")
            return None
        return Distribution(kind, choices=tuple(choices), default=default if default is not None else choices[0])
    low, high = raw.get("low"), raw.get("high")
    for key, v in (("low", low), ("high", high)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            p.add(f"{path}.{key}", v, "must be a number")
            return None
    if not low < high:
        p.add(f"{path}.high", high, f"must be greater than low ({low})")
        return None
    if kind == "loguniform" and low <= 0:
        p.add(f"{path}.low", low, "must be > 0 for loguniform")
        return None
    if default is None:
        p.add(f"{path}.default", default, "is required (it is the value used by grid studies)")
        return None
    return Distribution(kind, low=float(low), high=float(high), default=default)


def _check_level(name: str, value: Any, path: str, p: _Problems) -> bool:
    kind = TRIAL_PARAMS[name]
    if kind is bool:
        if not isinstance(value, bool):
            p.add(path, value, "must be true or false")
            return False
        return True
    if kind is str:
        if value not in NORM_NAMES:
            p.add(path, value, f"is not a known norm; {_choices(NORM_NAMES)}")
            return False
        return True
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        p.add(path, value, "must be an integer")
        return False
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        p.add(path, value, "must be a number")
        return False
    minimum = {"frozen_stages": 0, "seq_len": 1, "videos_per_batch": 1}.get(name)
    if minimum is not None and value < minimum:
        p.add(path, value, f"must be >= {minimum}")
        return False
    if kind is float and value <= 0 and name == "lr":
        p.add(path, value, "must be > 0")
        return False
    return True


def _parse_linked_levels(levels: list[dict], path: str,
                         p: _Problems) -> tuple[list[dict], tuple[str, ...]]:
    """A linked factor's good levels and the parameters they set (none if the first level does
    not name >= 2 trial parameters). Each level sets the same parameters, every value checked as
    a plain factor's level; levels distinct. Keys in the first level's order."""
    params = tuple(levels[0])
    good: list[dict] = []
    if len(params) < 2:
        p.add(f"{path}[0]", levels[0], "must set at least two parameters (one parameter is a "
              "plain factor)")
        return good, ()
    unknown = [q for q in params if q not in TRIAL_PARAMS]
    for q in unknown:
        p.add(f"{path}[0].{q}", q, f"is not an ablatable parameter; {_choices(TRIAL_PARAMS)}")
    if unknown:
        return good, ()
    seen: set[str] = set()
    for i, level in enumerate(levels):
        lpath = f"{path}[{i}]"
        if set(level) != set(params):
            p.add(lpath, level, f"must set the same parameters as every level: {', '.join(params)}")
            continue
        ok = all([_check_level(q, level[q], f"{lpath}.{q}", p) for q in params])
        key = repr([level[q] for q in params])
        if key in seen:
            p.add(lpath, level, "repeats an earlier level")
            ok = False
        seen.add(key)
        if ok:
            good.append({q: level[q] for q in params})
    return good, params


def parse_search_space(raw: Any, name: str, p: _Problems, path: str = "search_space") -> SearchSpace:
    raw = _mapping(raw, path, p)
    _unknown_keys(raw, ["name", "factors", "nuisance", "description"], path, p)
    factors_raw = _mapping(raw.get("factors"), f"{path}.factors", p)
    nuisance_raw = _mapping(raw.get("nuisance"), f"{path}.nuisance", p)
    factors: list[tuple[str, tuple]] = []
    swept: dict[str, str] = {}  # trial parameter -> the factor that sets it
    for fname, levels in factors_raw.items():
        fpath = f"{path}.factors.{fname}"
        linked = (isinstance(levels, list) and bool(levels)
                  and all(isinstance(v, dict) for v in levels))
        if fname in TRIAL_PARAMS and linked:
            p.add(fpath, fname, "names a trial parameter; a linked factor (levels that are "
                  f"mappings) needs a name of its own, not one of: {', '.join(TRIAL_PARAMS)}")
            swept.setdefault(fname, fname)
            continue
        if fname not in TRIAL_PARAMS and not linked:
            p.add(fpath, fname, f"is not an ablatable parameter; {_choices(TRIAL_PARAMS)} "
                  "(or a linked factor: a list of mappings, each setting several of them)")
            continue
        if not isinstance(levels, list) or not levels:
            p.add(fpath, levels, "must be a non-empty list of levels")
            continue
        if linked:
            good, params = _parse_linked_levels(levels, fpath, p)
        else:
            if len(set(map(repr, levels))) != len(levels):
                p.add(fpath, levels, "has repeated levels")
            good = [v for i, v in enumerate(levels) if _check_level(fname, v, f"{fpath}[{i}]", p)]
            params = (fname,)
        for param in params:
            if param in swept:
                p.add(fpath, param, f"is also set by factor {swept[param]}; a parameter belongs "
                      "to one factor")
            swept.setdefault(param, fname)
        factors.append((fname, tuple(good)))
    for core in CORE_FACTORS:
        if core not in swept:
            p.add(f"{path}.factors", core, "is missing: every study states its levels of "
                  + ", ".join(CORE_FACTORS) + " (one level is fine; a linked factor may set them)")
    nuisance: list[tuple[str, Distribution]] = []
    for nname, spec in nuisance_raw.items():
        npath = f"{path}.nuisance.{nname}"
        if nname not in TRIAL_PARAMS or nname in CORE_FACTORS or nname in OPTIONAL_FACTORS:
            allowed = [k for k in TRIAL_PARAMS if k not in CORE_FACTORS + OPTIONAL_FACTORS]
            p.add(npath, nname, f"is not a nuisance parameter; {_choices(allowed)}")
            continue
        if nname in swept:
            p.add(npath, nname, "is also listed as a factor; a parameter is either ablated or sampled")
            continue
        dist = _parse_distribution(nname, spec, npath, p)
        if dist is not None:
            nuisance.append((nname, dist))
    return SearchSpace(name=name, factors=tuple(factors), nuisance=tuple(nuisance))


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a study (it becomes a directory and an MLflow experiment), or None."""
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ \t'\""):
        return "must be a non-empty string without spaces, quotes or slashes"
    return None


STUDY_KEYS = ("name", "description", "dataset", "task", "model", "budget", "evaluation",
              "augmentation", "fault_tolerance", "performance", "resources", "searcher", "seeds",
              "metric", "search_space")


def parse_study(raw: Any, *, source: str = "study", base_dir: Path | None = None,
                search_space_dirs: Iterable[Path] = (), check_environment: bool = True,
                check_data: bool = True) -> StudySpec:
    """Validate a study mapping; raise one `StudyError` listing every problem.

    `check_environment=False` skips the checks that need this machine (local weights file,
    backbone structure, data lengths): used to re-read a study directory's resolved study.
    """
    p = _Problems()
    raw = _mapping(raw, "study", p)
    _unknown_keys(raw, STUDY_KEYS, "", p)
    name = raw.get("name")
    if name_problem(name):
        p.add("name", name, name_problem(name))
        name = "study"
    dataset = _parse_dataset(raw.get("dataset"), p)
    task = _parse_task(raw.get("task"), p)
    augmentation = _parse_augmentation(raw.get("augmentation"), p)
    fault_tolerance = _dataclass_from(
        FaultToleranceSpec, _mapping(raw.get("fault_tolerance"), "fault_tolerance", p),
        "fault_tolerance", p, {"trial_retries": 0, "worker_retries": 0, "keep_checkpoints": 1})
    model = _parse_model(raw.get("model"), p, check_files=check_environment)
    budget = _dataclass_from(BudgetSpec, _mapping(raw.get("budget"), "budget", p), "budget", p,
                             minimums={"epochs": 1, "steps_per_epoch": 1})
    evaluation = _dataclass_from(EvaluationSpec, _mapping(raw.get("evaluation"), "evaluation", p),
                                 "evaluation", p, minimums={"precise_bn_batches": 0})
    for flag in ("probes", "cheat_gap"):
        if not isinstance(getattr(evaluation, flag), bool):
            p.add(f"evaluation.{flag}", getattr(evaluation, flag), "must be true or false")
    resources = _dataclass_from(ResourceSpec, _mapping(raw.get("resources"), "resources", p),
                                "resources", p, minimums={"workers": 1, "cpus_per_worker": 0.01,
                                                          "gpus_per_worker": 0})
    performance = _parse_performance(raw.get("performance"), resources, p)
    searcher = _parse_searcher(raw.get("searcher"), p)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        p.add("seeds", seeds, "must be a non-empty list of integers")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        p.add("seeds", seeds, "has repeated seeds")
    if searcher.type == "optuna" and len(seeds) != 1:
        p.add("seeds", seeds, "optuna searches with one seed (a sampler must not tune the seed); "
              "list one seed, or use searcher.type: grid to cross seeds")
    metric = _parse_metric(raw.get("metric"), task.name, p)

    space_ref = raw.get("search_space")
    if isinstance(space_ref, str):
        space_raw, space_path = _load_search_space_file(space_ref, base_dir, search_space_dirs, p)
        space = parse_search_space(space_raw, space_ref, p, path=f"search_space({space_path})")
    else:
        space = parse_search_space(space_ref, (space_ref or {}).get("name", "inline")
                                   if isinstance(space_ref, dict) else "inline", p)
        if space_ref is None:
            p.add("search_space", None, "is required: a search space name from search_spaces/ or a mapping")

    k = performance.grad_accumulation
    for where, v in space.param_levels("videos_per_batch") if k > 1 else ():
        if isinstance(v, int) and v % resources.workers == 0 and v % (resources.workers * k):
            p.add(f"search_space.factors.{where}", v,
                  f"must be divisible by resources.workers x performance.grad_accumulation "
                  f"({resources.workers} x {k}): each micro-batch takes an equal share of "
                  "a worker's sequences")
    if True in space.param_values().get("precise_bn", ()) and isinstance(
            evaluation.precise_bn_batches, int) and evaluation.precise_bn_batches < 1:
        p.add("evaluation.precise_bn_batches", evaluation.precise_bn_batches,
              "must be >= 1 when precise_bn is a factor: the batches PreciseBN recomputes the BN "
              "statistics over")
    spec = StudySpec(name=name, description=str(raw.get("description", "")), dataset=dataset,
                     task=task, model=model, budget=budget, resources=resources, searcher=searcher,
                     seeds=tuple(seeds), metric=metric, search_space=space, evaluation=evaluation,
                     augmentation=augmentation, fault_tolerance=fault_tolerance,
                     performance=performance)
    if check_environment:  # runs even after other problems, so one error lists them all
        _check_against_data_and_model(spec, p, check_data)
    if p.items:
        raise StudyError(source, p.items)
    return spec


def _parse_metric(raw: Any, task: str, p: _Problems) -> MetricSpec:
    """The metric to optimize/compare; its default and valid names depend on the task."""
    raw = _mapping(raw, "metric", p)
    valid = TASK_METRICS[task]
    if raw.get("name") in CHEAT_GAP_METRICS:
        p.add("metric.name", raw["name"], "is measured once, after the last epoch "
              "(evaluation.cheat_gap), and Tune needs the metric every epoch; compare it with "
              f"`pitfalls report RESULTS.parquet --metric {raw['name']} --mode min`")
        return MetricSpec(name=raw["name"], mode=CHEAT_GAP_METRICS[raw["name"]])
    name = raw.get("name", DEFAULT_METRIC[task])
    default_mode = valid.get(name, "max")
    metric = _dataclass_from(MetricSpec, {"mode": default_mode, **raw, "name": name}, "metric", p, {})
    if metric.name not in valid:
        p.add("metric.name", metric.name, f"is not a metric of task {task}; {_choices(valid)}")
    elif metric.mode != valid[metric.name]:
        p.add("metric.mode", metric.mode, f"{metric.name} is better when "
              f"{'lower' if valid[metric.name] == 'min' else 'higher'}: use mode {valid[metric.name]}")
    if metric.mode not in MODES:
        p.add("metric.mode", metric.mode, _choices(MODES))
    return metric


def _load_search_space_file(ref: str, base_dir: Path | None, dirs: Iterable[Path], p: _Problems):
    candidates: list[Path] = []
    roots = [*(Path(d) for d in dirs)]
    if base_dir is not None:
        roots += [base_dir, base_dir / "search_spaces", base_dir.parent / "search_spaces"]
    roots.append(Path.cwd() / "search_spaces")
    for root in roots:
        for name in (ref, f"{ref}.yaml", f"{ref}.yml"):
            candidates.append(root / name)
    for c in candidates:
        if c.is_file():
            return yaml.safe_load(c.read_text()), str(c)
    known = sorted({c.stem for r in roots if r.is_dir() for c in r.glob("*.y*ml")})
    p.add("search_space", ref, f"was not found; {_choices(known) if known else 'no search spaces found'}")
    return None, ref


def _check_against_data_and_model(spec: StudySpec, p: _Problems, check_data: bool = True) -> None:
    """Checks that need the data's shape or the backbone's structure (imports timm lazily)."""
    from pitfalls.models.backbone import backbone_info

    space = spec.search_space
    info = backbone_info(spec.model.backbone)
    if info.error:
        p.add("model.backbone", spec.model.backbone, info.error)
    else:
        for where, norm in space.param_levels("norm"):
            if norm not in info.norms:
                p.add(f"search_space.factors.{where}", norm,
                      f"is not supported for {info.family} backbones ({spec.model.backbone}); "
                      f"supported: {', '.join(info.norms)}")
        for where, k in space.param_levels("frozen_stages"):
            if k > info.num_stages:
                p.add(f"search_space.factors.{where}", k,
                      f"is beyond {spec.model.backbone}'s {info.num_stages} stages; "
                      f"valid: 0..{info.num_stages}")
    train_lengths = _check_data(spec, p) if check_data else None
    if train_lengths is None:
        return
    shortest = min(train_lengths)
    for where, t in space.param_levels("seq_len"):
        if t > shortest:
            p.add(f"search_space.factors.{where}", t,
                  f"is longer than the shortest training video ({shortest} frames); valid: 1..{shortest}")
    for where, v in space.param_levels("videos_per_batch"):
        if v > len(train_lengths):
            p.add(f"search_space.factors.{where}", v,
                  f"exceeds the {len(train_lengths)} training videos (sequences in a batch come "
                  f"from distinct videos); valid: 1..{len(train_lengths)}")
    if spec.resources.workers > 1 and not spec.resources.gpus_per_worker:
        for where, norm in space.param_levels("norm"):
            if norm == "sync_batch":
                p.add(f"search_space.factors.{where}", norm,
                      "synchronizes BN across DDP workers on GPUs only (torch's SyncBatchNorm); "
                      "set resources.gpus_per_worker, or use one worker (then it is plain BN)")
    if spec.resources.workers > 1:
        for where, v in space.param_levels("videos_per_batch"):
            if v % spec.resources.workers:
                p.add(f"search_space.factors.{where}", v,
                      f"must be divisible by resources.workers ({spec.resources.workers}): "
                      "each DDP worker takes an equal share of the batch's videos")


def _check_data(spec: StudySpec, p: _Problems) -> list[int] | None:
    """Read the dataset's labels and file lists (no decoding): every file/line problem, the
    anticipated instruments, and the training videos' lengths (None if the data is unusable)."""
    if spec.dataset.name == "synthetic":
        opts = spec.dataset.options
        lengths = video_lengths(opts)[opts.val_videos:]
        tool_names = tuple(f"tool{k + 1}" for k in range(opts.num_tools))
    else:
        from pitfalls.data.base import DataError
        from pitfalls.data.load import load_data

        try:
            data = load_data(spec.dataset)
        except DataError as e:
            p.items.extend(f"dataset ({e.source}): {x}" for x in e.problems)
            return None
        lengths = [len(v) for v in data.train]
        tool_names = data.tool_names
        if not lengths:
            p.add("dataset.options.split", None, "has no training videos")
            return None
    if spec.task.name == "anticipation":
        from pitfalls.data.load import anticipation_tools

        if not tool_names:
            p.add("task.name", "anticipation", f"needs instrument labels; dataset "
                  f"{spec.dataset.name} has none (synthetic: num_tools > 0; frames: tool_columns)")
        for i, t in enumerate(spec.task.tools):
            if t not in tool_names:
                p.add(f"task.tools[{i}]", t, f"is not an instrument of the dataset; {_choices(tool_names)}")
        if not spec.task.tools and tool_names:
            anticipation_tools(spec.dataset.name, spec.task, tool_names)
    return lengths


def load_study(path: str | Path, search_space_dirs: Iterable[Path] = (),
               check_data: bool = True) -> StudySpec:
    """Read and validate a study YAML file (search spaces resolved next to it or in ./search_spaces).

    `check_data=False` skips reading the dataset (`pitfalls plan` of a study whose data lives
    on the cluster)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(str(path), [f"study file: {str(path)!r} does not exist"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyError(str(path), [f"YAML: {e}"]) from None
    return parse_study(raw, source=str(path), base_dir=path.resolve().parent,
                       search_space_dirs=search_space_dirs, check_data=check_data)


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    p = _Problems()
    space = parse_search_space(yaml.safe_load(path.read_text()), path.stem, p, path=str(path))
    if p.items:
        raise StudyError(str(path), p.items)
    return space

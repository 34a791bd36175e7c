"""Trial parameters, each declared once: its type and values (the field's annotation), its role
in a study, where it goes, and its default.

Everything that knows about trial parameters derives from `TrialParams` below: study-file
validation (levels of factors, nuisance distributions), the Tune and Optuna spaces, the results
schema's parameter columns, MLflow params, the report's factor columns and the planner's model
shapes. Adding a parameter is its declaration here, its use (where `target` says it goes), and
one test.

Roles:
- core: every study states its levels (one level is fine), the four factors of the papers;
- optional: a factor if the study sweeps it, else its default;
- nuisance: sampled by Optuna; a grid study trains every arm at its default (also a factor);
- seed: one trial per seed (grid) or the study's one seed (Optuna).
Targets: `model` (the model builder), `sampler` (which frames a batch holds), `optimizer`
(`pitfalls.train.optim.make_optimizer`), `loop` (the training loop itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Annotated, Any, get_args

from pitfalls.config.modes import MODE_NAMES
from pitfalls.fields import Bool, Float, Int, Text, field_types, marker, one_of
from pitfalls.models.heads import HEAD_NAMES
from pitfalls.models.norms import NORM_NAMES

CORE, OPTIONAL, NUISANCE, SEED = "core", "optional", "nuisance", "seed"


@dataclass(frozen=True)
class Param:
    """What the platform knows about one trial parameter (the field's metadata)."""

    role: str
    target: str
    default: Any = None  # for optional and nuisance parameters (None with `study_default`)
    study_default: str = ""  # the study field that gives the default, e.g. "model.backbone"
    upgrade: Any = None  # its value in results files written before it existed (else null)
    record_fixed: bool = True  # when no factor sets it, the results still record its value
    doc: str = ""


def param(role: str, target: str, default: Any = MISSING, *, study_default: str = "",
          upgrade: Any = None, record_fixed: bool = True, doc: str = ""):
    info = Param(role, target, None if default is MISSING else default, study_default, upgrade,
                 record_fixed, doc)
    return field(default=default, metadata={"param": info})


@dataclass(frozen=True, kw_only=True)
class TrialParams:
    """The flat per-trial parameters: exactly what MLflow records and the results table keys."""

    norm: Annotated[str, one_of(*NORM_NAMES, what="norm")] = param(
        CORE, "model", doc="normalization of the backbone (docs/norms.md)")
    frozen_stages: Annotated[int, Int(ge=0)] = param(
        CORE, "model", doc="stem + first k backbone stages frozen (their BN as FrozenBN)")
    seq_len: Annotated[int, Int(ge=1)] = param(CORE, "sampler", doc="consecutive frames per sequence")
    videos_per_batch: Annotated[int, Int(ge=1)] = param(
        CORE, "sampler", doc="batch diversity: distinct videos per batch")
    carry_hidden: Annotated[bool, Bool()] = param(
        OPTIONAL, "sampler", False, upgrade=False,
        doc="carry the head's state (detached) across consecutive chunks of a video")
    # as a factor: PreciseBN (evaluation.precise_bn_batches) vs the EMA running statistics; when
    # not swept, evaluation.precise_bn_batches alone decides (see `study_precise_bn_batches`)
    precise_bn: Annotated[bool, Bool()] = param(OPTIONAL, "loop", False, record_fixed=False,
                                                doc="PreciseBN statistics vs the EMA")
    lr: Annotated[float, Float(gt=0)] = param(NUISANCE, "optimizer", 1e-3, doc="learning rate")
    weight_decay: Annotated[float, Float(ge=0)] = param(NUISANCE, "optimizer", 1e-4,
                                                        doc="weight decay (AdamW's, or SGD's L2)")
    seed: Annotated[int, Int(ge=0)] = param(SEED, "loop", doc="initialization and data order")
    # None: the study's `model.backbone` / the type of its first `model.temporal_head`
    backbone: Annotated[str, Text(what="a timm model name")] = param(
        OPTIONAL, "model", None, study_default="model.backbone", doc="timm model of the CNN")
    temporal_head: Annotated[str, one_of(*HEAD_NAMES, what="temporal head")] = param(
        OPTIONAL, "model", None, study_default="model.default_head",
        doc="temporal head type (its options: model.temporal_head); none under frame_only")
    training: Annotated[str, one_of(*MODE_NAMES, what="training mode")] = param(
        OPTIONAL, "loop", "end_to_end", upgrade="end_to_end",
        doc="end_to_end, or a baseline: frame_only, two_stage (pitfalls.config.modes)")
    # The seeds' optimization details (used in pitfalls.train.optim and pitfalls.train.tasks).
    # Results written before they existed trained AdamW, unweighted, unclipped: their upgrades.
    optimizer: Annotated[str, one_of("adamw", "sgd", what="optimizer")] = param(
        OPTIONAL, "optimizer", "adamw", upgrade="adamw", doc="adamw, or sgd (Nesterov momentum)")
    momentum: Annotated[float, Float(ge=0, lt=1)] = param(
        NUISANCE, "optimizer", 0.9, doc="SGD's momentum (optimizer sgd only; 0: plain SGD)")
    agc_clip: Annotated[float, Float(ge=0)] = param(
        NUISANCE, "optimizer", 0.0, upgrade=0.0,
        doc="adaptive gradient clipping factor of the backbone (timm's AGC); 0: off")
    class_weights: Annotated[str, one_of("none", "median_frequency", what="class weighting")] = param(
        OPTIONAL, "loop", "none", upgrade="none",
        doc="phase cross-entropy weighted by median frequency of the training split, or not")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialParams":
        """From a Tune config or an MLflow run (values converted to the declared types);
        absent parameters take their defaults."""
        return cls(**{name: TYPES[name](d[name]) if d[name] is not None else None
                      for name in PARAMS if name in d})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_target(self, target: str) -> dict[str, Any]:
        """The parameters that go to `target` (model, sampler, optimizer, loop)."""
        return {n: getattr(self, n) for n, p in PARAMS.items() if p.role != SEED and p.target == target}


PARAMS: dict[str, Param] = {f.name: f.metadata["param"] for f in fields(TrialParams)}
_HINTS = field_types(TrialParams)
CHECKS = {name: marker(_HINTS[name]) for name in PARAMS}  # the level check of each parameter
TYPES: dict[str, type] = {name: get_args(_HINTS[name])[0] for name in PARAMS}
CORE_FACTORS = tuple(n for n, p in PARAMS.items() if p.role == CORE)
OPTIONAL_FACTORS = tuple(n for n, p in PARAMS.items() if p.role == OPTIONAL)
NUISANCE_PARAMS = tuple(n for n, p in PARAMS.items() if p.role == NUISANCE)
# Parameters a search space may list as factors (the seed is the study's `seeds`).
ABLATABLE = tuple(n for n, p in PARAMS.items() if p.role != SEED)
# Values of parameters a study does not set, before the study's own defaults (model.*) apply.
DEFAULTS = {n: p.default for n, p in PARAMS.items() if p.role in (OPTIONAL, NUISANCE)}
NUISANCE_DEFAULTS = {n: PARAMS[n].default for n in NUISANCE_PARAMS}
STUDY_DEFAULTS = {n: p.study_default for n, p in PARAMS.items() if p.study_default}


def check_level(name: str, value: Any) -> Any:
    """`value` as a level of parameter `name`; raises ValueError saying why it is not one."""
    return CHECKS[name].check(value)


def parse_param(name: str, text: str) -> Any:
    """A trial parameter from its string form (MLflow stores params as strings)."""
    if TYPES[name] is bool:
        return text.strip().lower() in ("true", "1")
    if text == "None":
        return None
    return TYPES[name](text)

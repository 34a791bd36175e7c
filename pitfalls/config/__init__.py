"""Study files -> validated, frozen config objects.

A study YAML is parsed exactly once, at the entry point, into a `StudySpec`
(`pitfalls.config.parse`). Everything below (sweep, train loop, models) takes these objects or
explicit arguments, never raw dicts. The config objects (`spec`), the trial parameters
(`params`) and the metric registry (`metrics`) import neither torch nor pydantic; parsing
imports pydantic (loaded on first use of the names below that need it).
"""

from __future__ import annotations

from importlib import import_module

from pitfalls.config.metrics import METRICS, default_metric, task_metrics
from pitfalls.config.params import (
    CORE_FACTORS,
    NUISANCE_DEFAULTS,
    OPTIONAL_FACTORS,
    PARAMS,
    TrialParams,
    parse_param,
)
from pitfalls.config.problems import StudyError
from pitfalls.config.spec import (
    AugmentSpec,
    BudgetSpec,
    DatasetSpec,
    Distribution,
    EvaluationSpec,
    FaultToleranceSpec,
    MetricSpec,
    ModelSpec,
    PerformanceSpec,
    ResourceSpec,
    SearcherSpec,
    SearchSpace,
    StudySpec,
    TaskSpec,
    TrialConfig,
    level_label,
    precise_bn_batches,
    study_precise_bn_batches,
)

# The dataset options classes, where Tune states pickled by earlier versions name them.
from pitfalls.data.cholec80 import Cholec80Options  # noqa: F401
from pitfalls.data.frames import FramesOptions  # noqa: F401

_PARSE = ("load_search_space", "load_study", "name_problem", "parse_search_space", "parse_study",
          "read_yaml")

__all__ = ["AugmentSpec", "BudgetSpec", "CORE_FACTORS", "DatasetSpec", "Distribution",
           "EvaluationSpec", "FaultToleranceSpec", "METRICS", "MetricSpec", "ModelSpec",
           "NUISANCE_DEFAULTS", "OPTIONAL_FACTORS", "PARAMS", "PerformanceSpec", "ResourceSpec",
           "SearchSpace", "SearcherSpec", "StudyError", "StudySpec", "TaskSpec", "TrialConfig",
           "TrialParams", "default_metric", "level_label", "parse_param", "precise_bn_batches",
           "study_precise_bn_batches", "task_metrics", *_PARSE]


def __getattr__(name: str):
    if name in _PARSE:
        return getattr(import_module("pitfalls.config.parse"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

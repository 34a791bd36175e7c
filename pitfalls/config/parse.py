"""A study file -> a validated `StudySpec`, or one `StudyError` listing every problem.

Each section of the study file is validated with pydantic against its config dataclass
(`pitfalls.config.spec`): unknown keys at any depth, wrong types (a float or a boolean where an
integer belongs), NaN and infinities, values out of range, unknown choices, each with its field
path. A section that fails does not stop the others: every section is checked, then the checks
that relate sections (`study_problems`), then, unless told otherwise, the checks against this
machine's data and the backbones' structure (`pitfalls.config.checks`). Only then is a
`StudyError` raised, naming every problem.

Imports pydantic and PyYAML; never torch or timm (validation takes well under 2 s on 2 cores).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from pitfalls.config.metrics import AFTER_TRAINING_METRICS, METRICS, MODES, default_metric, task_metrics
from pitfalls.config.params import ABLATABLE, CORE_FACTORS, NUISANCE_PARAMS, check_level
from pitfalls.config.problems import Problems, StudyError, add_validation_error, choices
from pitfalls.config.spec import (
    TASK_OPTIONS,
    AugmentSpec,
    BudgetSpec,
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
)
from pitfalls.data.load import DATASETS, DatasetSpec
from pitfalls.fields import FORBID_EXTRA, Tagged, field_types
from pitfalls.models.heads import HEADS

STUDY_KEYS = ("name", "description", "dataset", "task", "model", "budget", "evaluation",
              "augmentation", "fault_tolerance", "performance", "resources", "searcher", "seeds",
              "metric", "search_space")
SECTIONS = {"budget": BudgetSpec, "evaluation": EvaluationSpec, "resources": ResourceSpec,
            "fault_tolerance": FaultToleranceSpec, "performance": PerformanceSpec,
            "augmentation": AugmentSpec, "searcher": SearcherSpec, "model": ModelSpec}
SEARCH_SPACE_KEYS = ("name", "factors", "nuisance", "description")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a study, or None: it becomes a directory, an MLflow experiment and
    an Optuna study, so letters, digits and `._-` only, not starting with `.` or `-`."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        return ("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(it names the study's directory)")
    return None


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@cache
def _adapter(tp: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def _dataset_members() -> tuple[type, ...]:
    """One dataclass per registered dataset, `name` its tag (pydantic's discriminated union)."""
    members = []
    for name, entry in DATASETS.items():
        cls = dataclasses.make_dataclass(
            name, [("name", Literal[name], name),
                   ("options", entry.options, dataclasses.field(default_factory=entry.options))],
            frozen=True)
        cls.__pydantic_config__ = FORBID_EXTRA
        members.append(cls)
    return tuple(members)


DATASET_UNION = Annotated[Any, Tagged("name", _dataset_members())]


def _validate(tp: Any, raw: Any, path: str, p: Problems, tags: Iterable[str] = (),
              what: dict | None = None) -> Any:
    """`raw` validated as `tp`, or None after adding its problems."""
    from pydantic import ValidationError

    try:
        return _adapter(tp).validate_python(raw)
    except ValidationError as e:
        add_validation_error(p, e, path, tp, tags, what)
        return None


def _mapping(raw: Any, path: str, p: Problems) -> dict | None:
    """A section's mapping (absent or empty: {}), or None after saying it is not one."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        p.add(path, raw, "must be a mapping")
        return None
    return raw


def _fields(cls: type, raw: dict, path: str, p: Problems) -> tuple[Any, bool]:
    """`raw` as dataclass `cls` and whether it is valid. When a field is not, the others are
    still checked together (`cls.problems()`, on the valid fields and the defaults of the
    others, skipping what rests on an invalid field): a bad field hides nothing else."""
    before = p.count()
    obj = _validate(cls, raw, path, p, tags=HEADS, what={"temporal_head": "temporal head"})
    failed: set[str] = set()
    if obj is None:
        good = {}
        for name, hint in field_types(cls).items():
            if name in raw:
                alone = Problems()
                value = _validate(hint, raw[name], path, alone)
                if alone:
                    failed.add(name)
                else:
                    good[name] = value
        failed |= {k for k in raw if k not in field_types(cls)}
        obj = cls(**good) if _required(cls) <= set(good) else None
    if obj is not None and hasattr(obj, "problems"):
        p.extend([x for x in obj.problems() if not x.fields() & failed], path)
    return obj, p.count() == before and not failed


def _required(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _section(cls: type, raw: Any, path: str, p: Problems) -> tuple[Any, bool]:
    """(the section's object, whether it is valid); its defaults when it is not."""
    raw = _mapping(raw, path, p)
    if raw is None:
        return cls(), False
    obj, ok = _fields(cls, raw, path, p)
    return (obj if ok else cls()), ok


def _parse_model(raw: Any, p: Problems) -> tuple[ModelSpec, bool]:
    """The model section; a single `temporal_head` mapping keeps its own path in messages."""
    if isinstance(raw, dict) and isinstance(raw.get("temporal_head"), dict):
        q = Problems()
        model, ok = _section(ModelSpec, raw, "model", q)
        for line in q.items:
            p.items.append(line.replace("model.temporal_head[0]", "model.temporal_head", 1))
        return model, ok
    return _section(ModelSpec, raw, "model", p)


def _parse_dataset(raw: Any, p: Problems) -> tuple[DatasetSpec, bool]:
    """The dataset, validated as pydantic's discriminated union of the registered datasets'
    options (by `name`); when it fails, the valid fields are still checked together."""
    raw = _mapping(raw, "dataset", p)
    if raw is None:
        return DatasetSpec(), False
    raw = {"name": "synthetic", **raw}
    if not isinstance(raw["name"], str) or raw["name"] not in DATASETS:
        p.add("dataset.name", raw["name"], f"is not a known dataset; {choices(DATASETS)}")
        return DatasetSpec(), False
    before = p.count()
    parsed = _validate(DATASET_UNION, raw, "dataset", p, tags=DATASETS, what={"": "dataset"})
    if parsed is not None:
        spec = DatasetSpec(name=parsed.name, options=parsed.options)
        p.extend(getattr(spec.options, "problems", list)(), "dataset.options")
        return spec, p.count() == before
    options = raw.get("options")
    if options is None or isinstance(options, dict):
        _fields(DATASETS[raw["name"]].options, options or {}, "dataset.options", p)
    return DatasetSpec(), False


def _parse_task(raw: Any, p: Problems) -> tuple[TaskSpec, bool]:
    """`task: phase`, or a mapping {name, horizon, tools} (the options of anticipation)."""
    if raw is None:
        return TaskSpec(), True
    if isinstance(raw, str):
        if raw not in TASK_OPTIONS:
            p.add("task", raw, choices(TASK_OPTIONS))
            return TaskSpec(), False
        return TaskSpec(name=raw), True
    raw = _mapping(raw, "task", p)
    if raw is None:
        return TaskSpec(), False
    name, kept, ok = raw.get("name", "phase"), dict(raw), True
    if not isinstance(name, str) or name not in TASK_OPTIONS:
        p.add("task.name", name, choices(TASK_OPTIONS))
        return TaskSpec(), False
    for key in raw:  # another task's option: say whose it is
        others = [t for t, keys in TASK_OPTIONS.items() if key in keys]
        if others and key not in TASK_OPTIONS[name]:
            p.add(f"task.{key}", raw[key], f"applies to task {' or '.join(others)} only")
            del kept[key]
            ok = False
    task, valid = _section(TaskSpec, kept, "task", p)
    return task, ok and valid


def _parse_metric(raw: Any, task: str, p: Problems) -> MetricSpec:
    """The metric to optimize/compare; its default and valid names depend on the task."""
    raw = _mapping(raw, "metric", p) or {}
    unknown = [k for k in raw if k not in ("name", "mode")]
    for k in unknown:
        p.add(f"metric.{k}", k, f"is not a known field; {choices(['name', 'mode'])}")
    valid = task_metrics(task)
    name = raw.get("name", default_metric(task))
    mode = raw.get("mode")
    if not isinstance(name, str):
        p.add("metric.name", name, f"is not a metric of task {task}; {choices(valid)}")
        name = default_metric(task)
    if mode is not None and not isinstance(mode, str):
        p.add("metric.mode", mode, choices(MODES))
        mode = None
    if name in AFTER_TRAINING_METRICS and METRICS[name].split != "test" and METRICS[name].mode:
        p.add("metric.name", name, "is measured once, after the last epoch "
              "(evaluation.cheat_gap), and Tune needs the metric every epoch; compare it with "
              f"`pitfalls report RESULTS.parquet --metric {name} --mode min`")
        return MetricSpec(name=name, mode=METRICS[name].mode)
    mode = valid.get(name, "max") if mode is None else mode
    if name not in valid:
        p.add("metric.name", name, f"is not a metric of task {task}; {choices(valid)}")
    elif mode in MODES and mode != valid[name]:
        p.add("metric.mode", mode, f"{name} is better when "
              f"{'lower' if valid[name] == 'min' else 'higher'}: use mode {valid[name]}")
    if mode not in MODES:
        p.add("metric.mode", mode, choices(MODES))
    return MetricSpec(name=str(name), mode=str(mode))


def _parse_seeds(raw: Any, p: Problems) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        p.add("seeds", raw, "must be a non-empty list of integers >= 0")
        return (0,)
    good = []
    for i, s in enumerate(raw):
        try:
            good.append(check_level("seed", s))
        except ValueError as e:
            p.add(f"seeds[{i}]", s, str(e))
    if len(set(good)) != len(good):
        p.add("seeds", raw, "has repeated seeds")
    return tuple(dict.fromkeys(good)) or (0,)


# ---------------------------------------------------------------------------------------------
# Search space
# ---------------------------------------------------------------------------------------------


def _check(name: str, value: Any, path: str, p: Problems) -> bool:
    try:
        check_level(name, value)
        return True
    except ValueError as e:
        p.add(path, value, str(e))
        return False


def _linked_levels(levels: list[dict], path: str, p: Problems) -> tuple[list[dict], tuple[str, ...]]:
    """A linked factor's good levels and the parameters they set (none if the first level does
    not name >= 2 trial parameters). Each level sets the same parameters, every value checked as
    a plain factor's level; levels distinct. Keys in the first level's order."""
    params = tuple(levels[0])
    good: list[dict] = []
    if len(params) < 2:
        p.add(f"{path}[0]", levels[0], "must set at least two parameters (one parameter is a "
              "plain factor)")
        return good, ()
    unknown = [q for q in params if q not in ABLATABLE]
    for q in unknown:
        p.add(f"{path}[0].{q}", q, f"is not an ablatable parameter; {choices(ABLATABLE)}")
    if unknown:
        return good, ()
    seen: set[str] = set()
    for i, level in enumerate(levels):
        lpath = f"{path}[{i}]"
        if set(level) != set(params):
            p.add(lpath, level, f"must set the same parameters as every level: {', '.join(params)}")
            continue
        ok = all([_check(q, level[q], f"{lpath}.{q}", p) for q in params  # noqa: C419 - check all
                  if not _no_head(q, level)])
        key = repr([level[q] for q in params])
        if key in seen:
            p.add(lpath, level, "repeats an earlier level")
            ok = False
        seen.add(key)
        if ok:
            good.append({q: level[q] for q in params})
    return good, params


def _no_head(param: str, level: dict) -> bool:
    """`temporal_head: null` in a linked level whose training mode trains none (frame_only)."""
    from pitfalls.config.modes import MODES

    mode = MODES.get(level.get("training")) if isinstance(level.get("training"), str) else None
    return param == "temporal_head" and level[param] is None and mode is not None \
        and not mode.temporal_head


def parse_search_space(raw: Any, name: str, p: Problems, path: str = "search_space") -> SearchSpace:
    raw = _mapping(raw, path, p) or {}
    for key in raw:
        if key not in SEARCH_SPACE_KEYS:
            p.add(f"{path}.{key}", key, f"is not a known field; {choices(SEARCH_SPACE_KEYS)}")
    factors_raw = _mapping(raw.get("factors"), f"{path}.factors", p) or {}
    nuisance_raw = _mapping(raw.get("nuisance"), f"{path}.nuisance", p) or {}
    factors: list[tuple[str, tuple]] = []
    swept: dict[str, str] = {}  # trial parameter -> the factor that sets it
    for fname, levels in factors_raw.items():
        fpath = f"{path}.factors.{fname}"
        linked = (isinstance(levels, list) and bool(levels)
                  and all(isinstance(v, dict) for v in levels))
        if fname in ABLATABLE and linked:
            p.add(fpath, fname, "names a trial parameter; a linked factor (levels that are "
                  f"mappings) needs a name of its own, not one of: {', '.join(ABLATABLE)}")
            swept.setdefault(fname, fname)
            continue
        if fname not in ABLATABLE and not linked:
            p.add(fpath, fname, f"is not an ablatable parameter; {choices(ABLATABLE)} "
                  "(or a linked factor: a list of mappings, each setting several of them)")
            continue
        if not isinstance(levels, list) or not levels:
            p.add(fpath, levels, "must be a non-empty list of levels")
            continue
        if linked:
            good, params = _linked_levels(levels, fpath, p)
        else:
            if len(set(map(repr, levels))) != len(levels):
                p.add(fpath, levels, "has repeated levels")
            good = [v for i, v in enumerate(levels) if _check(fname, v, f"{fpath}[{i}]", p)]
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
        if nname not in NUISANCE_PARAMS:
            p.add(npath, nname, f"is not a nuisance parameter; {choices(NUISANCE_PARAMS)}")
            continue
        if nname in swept:
            p.add(npath, nname, "is also listed as a factor; a parameter is either ablated or sampled")
            continue
        dist = _distribution(nname, spec, npath, p)
        if dist is not None:
            nuisance.append((nname, dist))
    return SearchSpace(name=name, factors=tuple(factors), nuisance=tuple(nuisance))


def _distribution(name: str, raw: Any, path: str, p: Problems) -> Distribution | None:
    raw = _mapping(raw, path, p)
    if raw is None:
        return None
    if "distribution" not in raw:
        p.add(f"{path}.distribution", None, "is required; " + choices(
            ("uniform", "loguniform", "int", "choice")))
        return None
    before = p.count()
    dist = _validate(Distribution, raw, path, p)
    if dist is None:
        return None
    p.extend(dist.problems(), path)
    if p.count() > before:
        return None
    if dist.default is not None:
        try:  # the default is a value of the parameter
            check_level(name, dist.default)
        except ValueError as e:
            p.add(f"{path}.default", dist.default, str(e))
            return None
    return dist


def _load_search_space_file(ref: str, base_dir: Path | None, dirs: Iterable[Path], p: Problems):
    roots = [*(Path(d) for d in dirs)]
    if base_dir is not None:
        roots += [base_dir, base_dir / "search_spaces", base_dir.parent / "search_spaces"]
    roots.append(Path.cwd() / "search_spaces")
    for root in roots:
        for name in (ref, f"{ref}.yaml", f"{ref}.yml"):
            if (root / name).is_file():
                text, where = (root / name).read_text(), str(root / name)
                try:
                    return yaml.safe_load(text), where
                except yaml.YAMLError as e:
                    p.add(f"search_space({where})", ref, f"is not valid YAML: {_yaml_error(e)}")
                    return None, where
    known = sorted({c.stem for r in roots if r.is_dir() for c in r.glob("*.y*ml")})
    p.add("search_space", ref, f"was not found; {choices(known) if known else 'no search spaces found'}")
    return None, ref


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def parse_study(raw: Any, *, source: str = "study", base_dir: Path | None = None,
                search_space_dirs: Iterable[Path] = (), check_environment: bool = True,
                check_data: bool = True, check_weights: bool = True) -> StudySpec:
    """Validate a study mapping; raise one `StudyError` listing every problem.

    `check_environment=False` skips the checks that need this machine (local weights file,
    backbone structure, data lengths): used to re-read a study directory's resolved study.
    `check_data=False` skips only reading the dataset; `check_weights=False` only whether this
    machine can have the pretrained weights (`model.pretrained`).
    """
    from pitfalls.config.checks import environment_problems, study_problems

    p = Problems()
    if raw is None:
        raise StudyError(source, ["the study file is empty; a study is a mapping of sections "
                                  "(name, dataset, model, search_space, ...)"])
    if not isinstance(raw, dict):
        raise StudyError(source, [f"study: {raw!r} must be a mapping of sections (name, dataset, "
                                  "model, search_space, ...)"])
    for key in raw:
        if key not in STUDY_KEYS:
            p.add(str(key), key, f"is not a known field; {choices(STUDY_KEYS)}")
    name = raw.get("name")
    if name_problem(name):
        p.add("name", name, name_problem(name))
        name = "study"
    description = raw.get("description", "")
    if not isinstance(description, str):
        p.add("description", description, "must be a string")
        description = ""
    valid: dict[str, bool] = {}
    dataset, valid["dataset"] = _parse_dataset(raw.get("dataset"), p)
    task, valid["task"] = _parse_task(raw.get("task"), p)
    sections = {}
    for key, cls in SECTIONS.items():
        if key == "model":
            sections[key], valid[key] = _parse_model(raw.get(key), p)
        else:
            sections[key], valid[key] = _section(cls, raw.get(key), key, p)
    before = p.count()
    seeds = _parse_seeds(raw.get("seeds", [0]), p)
    valid["seeds"] = p.count() == before
    metric = _parse_metric(raw.get("metric"), task.name, p)

    space_ref = raw.get("search_space")
    before = p.count()
    if isinstance(space_ref, str):
        space_raw, where = _load_search_space_file(space_ref, base_dir, search_space_dirs, p)
        space = (parse_search_space(space_raw, space_ref, p, path=f"search_space({where})")
                 if p.count() == before else SearchSpace(space_ref, (), ()))
    else:
        space = parse_search_space(space_ref, (space_ref or {}).get("name", "inline")
                                   if isinstance(space_ref, dict) else "inline", p)
        if space_ref is None:
            p.add("search_space", None, "is required: a search space name from search_spaces/ or a mapping")
    valid["search_space"] = p.count() == before
    spec = StudySpec(name=name, description=description, dataset=dataset, task=task,
                     seeds=seeds, metric=metric, search_space=space, **sections)
    study_problems(spec, raw, valid, p)
    if check_environment:  # runs even after other problems, so one error lists them all
        environment_problems(spec, valid, p, check_data, check_weights)
    if p:
        raise StudyError(source, p.items)
    return spec


def _yaml_error(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(e, "problem", None) or e).split())


def read_yaml(path: Path) -> Any:
    """A YAML file, or a StudyError naming the file, line and column of a syntax error."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyError(str(path), [f"YAML syntax: {_yaml_error(e)}"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(str(path), [f"cannot read the file: {e}"]) from None


def load_study(path: str | Path, search_space_dirs: Iterable[Path] = (),
               check_data: bool = True, check_weights: bool = True) -> StudySpec:
    """Read and validate a study YAML file (search spaces resolved next to it or in ./search_spaces).

    `check_data=False` skips reading the dataset (`pitfalls plan` of a study whose data lives
    on the cluster); `check_weights=False` whether the pretrained weights can be had here."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(str(path), [f"study file: {str(path)!r} does not exist"])
    return parse_study(read_yaml(path), source=str(path), base_dir=path.resolve().parent,
                       search_space_dirs=search_space_dirs, check_data=check_data,
                       check_weights=check_weights)


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    p = Problems()
    space = parse_search_space(read_yaml(path), path.stem, p, path=str(path))
    if p:
        raise StudyError(str(path), p.items)
    return space


__all__ = ["STUDY_KEYS", "StudyError", "load_search_space", "load_study", "name_problem",
           "parse_search_space", "parse_study", "read_yaml"]

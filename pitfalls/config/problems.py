"""Collecting what is wrong with a study: one line per problem, `field: value why`.

Every check adds to one `Problems` list and the parser raises one `StudyError` at the end, so a
user sees everything wrong with a study file at once. pydantic's validation errors are
translated into the same form (the field path as the study file spells it, the bad value, what
would be valid); the translation imports pydantic only when there is an error to translate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, get_args

from pitfalls.fields import Problem, Tagged, field_types


class StudyError(ValueError):
    """Every problem found in a study definition, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


def choices(options: Iterable) -> str:
    return "valid choices: " + ", ".join(map(str, options))


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, value: Any, why: str) -> None:
        line = f"{path}: {value!r} {why}"
        if line not in self.items:  # one problem reached by two checks is one problem
            self.items.append(line)

    def extend(self, problems: Iterable[Problem], base: str) -> None:
        for x in problems:
            self.add(join(base, x.path), x.value, x.why)

    def __bool__(self) -> bool:
        return bool(self.items)

    def count(self) -> int:
        return len(self.items)


def join(base: str, path: str) -> str:
    if not path:
        return base
    if not base:
        return path
    return base + path if path.startswith("[") else f"{base}.{path}"


def loc_path(loc: Iterable) -> str:
    out = ""
    for part in loc:
        out = join(out, f"[{part}]" if isinstance(part, int) else str(part))
    return out


# ---------------------------------------------------------------------------------------------
# pydantic's errors in our words
# ---------------------------------------------------------------------------------------------

_SHAPES = {
    "dataclass_type": "must be a mapping", "dataclass_args_type": "must be a mapping",
    "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "tuple_type": "must be a list", "list_type": "must be a list",
    "missing": "is required", "missing_keyword_argument": "is required",
    "string_type": "must be a string", "int_type": "must be an integer",
    "int_parsing": "must be an integer", "float_type": "must be a number",
    "bool_type": "must be true or false",
    "invalid_key": "is not a field name (a field is named by a string)",
}


def _unwrap(t: Any) -> tuple[Any, Tagged | None]:
    """An annotation's type and its `Tagged` marker, if any."""
    meta = getattr(t, "__metadata__", ())
    tagged = next((m for m in meta if isinstance(m, Tagged)), None)
    return (get_args(t)[0] if meta else t), tagged


def _fields_at(root: Any, loc: tuple) -> list[str]:
    """The field names of the dataclass at `loc` under `root` (walking nested dataclasses,
    tuples and tagged unions as pydantic's error locations do), for "valid choices"."""
    t, tagged = _unwrap(root)
    members: tuple = ()
    for part in loc:
        if tagged is not None:
            members, tagged = tagged.members, None
        if isinstance(part, int):
            continue  # an item of a list: the same type
        if members:
            match = [m for m in members if getattr(m, "type", getattr(m, "name", None)) == part
                     or getattr(m, "__name__", "") == part]
            if match:
                t, members = match[0], ()
                continue
            t, members = members[0], ()
        if dataclasses.is_dataclass(t) and part in field_types(t):
            t, tagged = _unwrap(field_types(t)[part])
        else:
            return []
    if tagged is not None:
        t = tagged.members[0]
    return list(field_types(t)) if dataclasses.is_dataclass(t) else []


def add_validation_error(p: Problems, error: Exception, base: str, root: Any,
                         tags: Iterable[str] = (), what: dict[str, str] | None = None) -> None:
    """Every error of a pydantic `ValidationError` raised validating `root` at `base`.

    `tags` are the discriminator values of tagged unions (dropped from paths: the study file has
    no such level); `what` names a union's kind by its field (`{"temporal_head": "temporal head"}`).
    """
    tags = set(tags)
    for err in error.errors():
        loc = tuple(err["loc"])
        shown = tuple(x for x in loc if x not in tags and not str(x).startswith("function-"))
        path = join(base, loc_path(shown))
        kind, value = err["type"], err.get("input")
        if kind == "value_error":
            cause = err.get("ctx", {}).get("error")
            p.add(path, value, str(cause) if cause is not None else err["msg"])
        elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
            valid = _fields_at(root, tuple(x for x in loc[:-1]))
            key = loc[-1]
            p.add(path, key, "is not a known field" + (f"; {choices(valid)}" if valid else ""))
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            field = ctx.get("discriminator", "'type'").strip("'")
            expected = [x.strip().strip("'") for x in ctx.get("expected_tags", "").split(",")]
            owner = next((str(x) for x in reversed(shown) if isinstance(x, str)), "")
            label = (what or {}).get(owner, field)
            p.add(join(path, field), ctx.get("tag"), f"is not a known {label}; {choices(expected)}")
        elif kind in ("too_short", "too_long"):
            p.add(path, value, err["msg"].replace("Tuple", "list").lower())
        else:
            p.add(path, value, _SHAPES.get(kind, err["msg"]))

"""Value constraints for the fields of the study's config dataclasses, declared next to the field.

`epochs: Annotated[int, Int(ge=1)] = 2` says everything about a field once: its type, its
default and what values it takes. The same marker checks a search-space level
(`Int(ge=1).check(v)`) and, through its `__get_pydantic_core_schema__` hook, tells pydantic how
to validate the field when the study file is parsed (`pitfalls.config.parse`). This module
imports neither pydantic nor torch: the training core (which builds these dataclasses directly)
runs where pydantic is not installed.

Checks are strict, as a study file deserves: an integer field takes no float or boolean, a
number takes no boolean, NaN or infinity, a flag takes only true or false, text is a non-empty
string. Every failure is a `ValueError` whose message completes "<field>: <value> ...".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def pydantic_check(check):
    """The pydantic core schema of a marker: its `check` as a plain validator."""
    from pydantic_core import core_schema

    return core_schema.no_info_plain_validator_function(check)


class Marker:
    """A constraint marker: `check(value)` returns the value (converted) or raises ValueError
    with the message; pydantic calls the same `check` (through this hook) when it validates."""

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source, handler):
        return pydantic_check(self.check)


@dataclass(frozen=True)
class Int(Marker):
    """An integer (not a bool) with optional bounds; None allowed if `optional`."""

    ge: int | None = None
    le: int | None = None
    optional: bool = False
    message: str = ""  # said instead of the bound that failed
    auto: bool = False  # "auto" allowed too (resolved later, e.g. per device)

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.auto and value == "auto":
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be auto or an integer" if self.auto else "must be an integer")
        if self.ge is not None and value < self.ge:
            raise ValueError(self.message or f"must be >= {self.ge}")
        if self.le is not None and value > self.le:
            raise ValueError(self.message or f"must be <= {self.le}")
        return value


@dataclass(frozen=True)
class Float(Marker):
    """A finite number (an integer is taken as a float; a bool is not a number)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    optional: bool = False
    message: str = ""  # said instead of the bound that failed

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError("must be a number")
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        for bound, fails, word in ((self.ge, lambda b: value < b, ">="),
                                   (self.gt, lambda b: value <= b, ">"),
                                   (self.le, lambda b: value > b, "<="),
                                   (self.lt, lambda b: value >= b, "<")):
            if bound is not None and fails(bound):
                raise ValueError(self.message or f"must be {word} {bound:g}")
        return float(value)


@dataclass(frozen=True)
class Bool(Marker):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value


@dataclass(frozen=True)
class Text(Marker):
    """A non-empty string; None allowed if `optional`."""

    optional: bool = False
    what: str = "a non-empty string"

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be {self.what}")
        return value


@dataclass(frozen=True)
class Choice(Marker):
    """One of `values` (compared with their type: true is not 1). `what` names the kind in the
    message (`'x' is not a known norm; valid choices: ...`); `message` replaces it entirely."""

    values: tuple
    what: str = ""
    message: str = ""

    def check(self, value: Any) -> Any:
        if not any(value == v and type(value) is type(v) for v in self.values):
            if self.message:
                raise ValueError(self.message)
            prefix = f"is not a known {self.what}; " if self.what else ""
            raise ValueError(prefix + "valid choices: " + ", ".join(map(_shown, self.values)))
        return value


@dataclass(frozen=True)
class Ints(Marker):
    """A fixed-length list of integers (kept as a tuple), e.g. [width, height]."""

    length: int
    ge: int | None = None
    message: str = ""

    def check(self, value: Any) -> tuple:
        ok = (isinstance(value, (list, tuple)) and len(value) == self.length
              and all(isinstance(x, int) and not isinstance(x, bool)
                      and (self.ge is None or x >= self.ge) for x in value))
        if not ok:
            bound = f" >= {self.ge}" if self.ge is not None else ""
            raise ValueError(self.message or f"must be a list of {self.length} integers{bound}")
        return tuple(value)


@dataclass(frozen=True)
class Texts(Marker):
    """A list of strings (kept as a tuple)."""

    message: str = "must be a list of strings"

    def check(self, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise ValueError(self.message)
        return tuple(value)


@dataclass(frozen=True)
class ListOf(Marker):
    """A list (or tuple) of anything, kept as nested tuples (hashable); its items are checked by
    the owner's `problems()`, so that one bad item does not hide what is wrong with the others."""

    message: str = "must be a list"

    def check(self, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(self.message)
        return _frozen(value)


@dataclass(frozen=True)
class Tagged:
    """One of several dataclasses, told apart by their `tag` field (a `Literal`): a
    discriminated union, e.g. the temporal heads by `type`. `many` also takes a list of them
    (kept as a tuple); a single mapping is then a list of one. A mapping without the tag gets
    the first member's."""

    tag: str
    members: tuple[type, ...]
    many: bool = False

    def check(self, value: Any) -> Any:
        items = value if self.many else (value,)
        if not all(isinstance(v, self.members) for v in items):
            raise ValueError("must be " + " or ".join(m.__name__ for m in self.members))
        return tuple(items) if self.many else value

    def __get_pydantic_core_schema__(self, source, handler):
        from typing import Annotated, Union

        from pydantic import Field
        from pydantic_core import core_schema

        union = (Annotated[Union[self.members], Field(discriminator=self.tag)]  # noqa: UP007 - a tuple of types
                 if len(self.members) > 1 else self.members[0])
        schema = handler.generate_schema(tuple[union, ...] if self.many else union)
        default = getattr(self.members[0], self.tag)

        def with_tag(v: Any) -> Any:
            return {self.tag: default, **v} if isinstance(v, dict) else v

        def before(v: Any) -> Any:
            if self.many:
                items = [v] if isinstance(v, dict) else v
                return [with_tag(x) for x in items] if isinstance(items, list) else items
            return with_tag(v)

        return core_schema.no_info_before_validator_function(before, schema)


# Unknown keys in a study file are errors: every config dataclass sets this pydantic config.
FORBID_EXTRA = {"extra": "forbid"}


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Problem:
    """One problem a config object finds in itself: `path` relative to the object
    (`max_phase_frames`, `shared_looks[2]`), the bad value, and why (see `problems()` methods).
    `uses` names the other fields the check read: when one of them is itself invalid, the
    problem is not reported (it would rest on that field's default)."""

    path: str
    value: Any
    why: str
    uses: tuple[str, ...] = ()

    def fields(self) -> set[str]:
        return {self.path.split(".")[0].split("[")[0], *self.uses}


def one_of(*values: Any, what: str = "", message: str = "") -> Choice:
    return Choice(tuple(values), what, message)


def _shown(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def marker(annotation: Any) -> Any:
    """The constraint marker of an `Annotated[...]` field type, or None."""
    for m in getattr(annotation, "__metadata__", ()):
        if hasattr(m, "check"):
            return m
    return None


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations, `Annotated` metadata kept (resolved once per class)."""
    import typing

    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


_HINTS: dict[type, dict[str, Any]] = {}


def choices_of(cls: type, name: str) -> tuple:
    """The values a `Choice`-constrained field of dataclass `cls` takes."""
    m = marker(field_types(cls)[name])
    if not isinstance(m, Choice):
        raise TypeError(f"{cls.__name__}.{name} is not a choice field")
    return m.values

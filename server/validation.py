"""What the pydantic models of scorehost's config files share (``ModelConfig``, ``DeployConfig``).

    Annotated[int, Strict(), bounded_like(Settings, "gpu_mem_limit_mb")]

takes the constraints of a :class:`~server.settings.Settings` field (its ``Ge``/``Le``/``Gt``
metadata) instead of copying its numbers, so a config value is bounded exactly like the setting it
feeds. :func:`describe` turns a ``ValidationError`` into the one line the callers wrap in their own
exception (``raise ConfigError(...) from exc``).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated

from annotated_types import GroupedMetadata
from pydantic import BaseModel, BeforeValidator, Strict, ValidationError


@dataclass(frozen=True, slots=True)
class Bounds(GroupedMetadata):
    """Constraints borrowed from another model's field; pydantic unpacks them like ``Interval``."""

    constraints: tuple[object, ...]

    def __iter__(self) -> Iterator[object]:
        return iter(self.constraints)


def bounded_like(model: type[BaseModel], name: str) -> Bounds:
    """The constraints of ``model``'s field ``name`` (``Ge(1)``, ``Le(64)`` ...), for ``Annotated``.

    Only the constraints: not the default, the aliases or the validators. A misspelt ``name``
    fails at import, when the annotation is built.
    """
    return Bounds(tuple(model.model_fields[name].metadata))


def _whole_float_to_int(value: object) -> object:
    # JSON writers may emit 2.0 for 2; 2.5 stays a float and is refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer that may be written 2.0, never "2" or true: a config file's whole number.
WholeNumber = Annotated[int, Strict(), BeforeValidator(_whole_float_to_int)]

_MAX_SHOWN = 80


def _shown(value: object) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def describe(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    names: Mapping[str, str] | None = None,
    hints: Mapping[str, str] | None = None,
) -> str:
    """The first problem as one line: ``field.path: message (got value)``.

    ``names`` renames top-level fields to what the user wrote (``cpu_cores`` ->
    ``containerResourceRequirements.cpu``); ``hints`` replaces "unknown key" for keys that are
    refused on purpose. Errors of model-level checks have no field and read as their message.
    """
    names, hints = names or {}, hints or {}
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    if loc:
        loc[0] = names.get(loc[0], loc[0])
    where = ".".join(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        if where in hints:
            return f"{where}: {hints[where]}"
        if len(loc) > 1:  # a key of a nested object
            return f"unknown key {where!r}"
        known = [names.get(n, n) for n in model.model_fields]
        close = difflib.get_close_matches(where, known, n=1)
        did_you_mean = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {where!r}{did_you_mean}; known: {', '.join(known)}"
    if not where:
        return msg
    return f"{where}: {msg} (got {_shown(err['input'])})"

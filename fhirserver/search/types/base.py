"""What every parameter type provides, and the helpers they share.

A type handler answers three questions for its kind of value:
``extract``: which index rows do these element values give? ``parse``: what does
this search value mean (or why is it malformed)? ``condition``: which index rows
(or which resource column values) match it? The query builder and the indexer are
generic over handlers, so a new type (number, uri, quantity...) is one new module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement

from fhirserver.search.params import SearchParam

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
MAX_VALUE_CHARS = 1024


class BadValue(ValueError):
    """A search value is malformed. The message describes the problem, never the value."""


class BadModifier(ValueError):
    """The modifier is not supported for this parameter."""


@dataclass(frozen=True)
class Context:
    """What extraction and parsing may depend on besides the value itself.

    ``server_base`` (e.g. ``https://host/fhir``) turns absolute references to this
    server into relative ones. ``now`` anchors the ``ap`` date prefix; a cursor keeps
    it so that every page of one search means the same thing.
    """

    server_base: str | None = None
    now: datetime | None = None


Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class TypeHandler:
    name: str
    table: Any  # the idx_* ORM class holding this type's rows
    extract: Callable[[list[Any], SearchParam, Context], Rows]
    parse: Callable[[str, str | None, SearchParam, Context], Any]
    condition: Callable[[Any], ColumnElement[bool]]
    column_condition: Callable[[Any, Any], ColumnElement[bool]] | None = None
    negating_modifiers: frozenset[str] = frozenset()


def split_escaped(text: str, sep: str) -> list[str]:
    r"""Split on ``sep`` unless escaped with a backslash (FHIR: ``\,`` ``\|`` ``\$`` ``\\``).

    The parts keep their escapes, so that a later split on another separator still
    sees them; :func:`unescape` removes them at the end.
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def check_length(text: str) -> None:
    if len(text) > MAX_VALUE_CHARS:
        raise BadValue(f"a value is longer than {MAX_VALUE_CHARS} characters")


def no_modifier(modifier: str | None) -> None:
    if modifier is not None:
        raise BadModifier("modifier not supported")

"""String parameters: case- and accent-insensitive prefix match by default.

Index rows keep two forms: ``value``, normalised (NFKD, combining marks removed,
case-folded, whitespace collapsed) for the default and ``:contains`` matches, and
``exact``, the original text, for ``:exact``. Both are cut to 255 characters.

The prefix match is written as a range (``value >= p AND value < next(p)``) so that
the ``(res_type, param, value)`` B-tree serves it on SQLite and PostgreSQL alike (a
LIKE cannot use it: SQLite's LIKE is case-insensitive, and PostgreSQL needs the C
locale or pattern_ops for LIKE). The range is exact under code-point ordering: SQLite's
BINARY collation and PostgreSQL's C / C.UTF-8 collations. The LIKE kept beside it only
guards against false positives under another collation. ``:contains`` is a LIKE
'%x%' and scans (pg_trgm comes later).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, true

from fhirserver.models import IdxString
from fhirserver.search.params import SearchParam
from fhirserver.search.types.base import (
    BadModifier,
    BadValue,
    Context,
    Rows,
    TypeHandler,
    check_length,
    unescape,
)

MAX_CHARS = 255
MAX_CODE_POINT = 0x10FFFF


def normalize(text: str) -> str:
    """Fold case and accents so that "Zoë", "ZOE" and "zoe" index and search alike."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(stripped.split())[:MAX_CHARS]


def extract(nodes: list[Any], param: SearchParam, ctx: Context) -> Rows:
    return [{"value": normalize(n), "exact": n[:MAX_CHARS]} for n in nodes if isinstance(n, str) and n.strip()]


@dataclass(frozen=True)
class StringQuery:
    mode: str  # prefix | exact | contains
    value: str  # normalised
    exact: str = ""


def parse(raw: str, modifier: str | None, param: SearchParam, ctx: Context) -> StringQuery:
    check_length(raw)
    text = unescape(raw)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise BadValue("the value is not valid text")
    if modifier is None:
        return StringQuery("prefix", normalize(text))
    if modifier == "exact":
        return StringQuery("exact", normalize(text), text[:MAX_CHARS])
    if modifier == "contains":
        return StringQuery("contains", normalize(text))
    raise BadModifier("modifier not supported")


def successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound)."""
    chars = list(prefix)
    while chars and ord(chars[-1]) == MAX_CODE_POINT:
        chars.pop()
    if not chars:
        return None
    nxt = ord(chars[-1]) + 1
    chars[-1] = chr(0xE000 if 0xD800 <= nxt <= 0xDFFF else nxt)
    return "".join(chars)


def condition(q: StringQuery) -> ColumnElement[bool]:
    col = IdxString.value
    if q.mode == "exact":
        return and_(col == q.value, IdxString.exact == q.exact)
    if q.mode == "contains":
        return col.contains(q.value, autoescape=True)
    if not q.value:
        return true()
    upper = successor(q.value)
    bounds = [col >= q.value] + ([col < upper] if upper is not None else [])
    return and_(*bounds, col.startswith(q.value, autoescape=True))


HANDLER = TypeHandler("string", IdxString, extract, parse, condition)

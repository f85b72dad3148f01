"""Token parameters: codes, Codings, CodeableConcepts, Identifiers and plain values.

Index rows are ``(system, code)``; ``system`` is NULL when the element carries none
(a ``code`` such as ``status``, a boolean, a ContactPoint value). Search forms:
``code`` (any system), ``system|code``, ``|code`` (no system), ``system|`` (any code
of the system). ``:not`` matches resources with no matching token, including those
without the element at all (so ``status:not=completed,stopped`` is "none of these").
Matching is exact and case-sensitive, as FHIR codes are. Values are cut to 255
characters (the column width), in the index and in the query alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_

from fhirserver.models import IdxToken
from fhirserver.search.params import SearchParam
from fhirserver.search.types.base import (
    ID_RE,
    BadModifier,
    BadValue,
    Context,
    Rows,
    TypeHandler,
    check_length,
    split_escaped,
    unescape,
)

MAX_CHARS = 255


def _row(system: Any, code: Any) -> dict[str, Any] | None:
    if isinstance(code, bool):
        code = "true" if code else "false"
    if not isinstance(code, str) or not code:
        return None
    sys = system[:MAX_CHARS] if isinstance(system, str) and system else None
    return {"system": sys, "code": code[:MAX_CHARS]}


def _tokens(node: Any) -> list[dict[str, Any] | None]:
    if not isinstance(node, dict):
        return [_row(None, node)]
    if "coding" in node:  # CodeableConcept
        codings = node["coding"] if isinstance(node["coding"], list) else []
        return [_row(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
    if "code" in node:  # Coding
        return [_row(node.get("system"), node.get("code"))]
    if "value" in node:  # Identifier
        return [_row(node.get("system"), node.get("value"))]
    return []


def extract(nodes: list[Any], param: SearchParam, ctx: Context) -> Rows:
    return [row for node in nodes for row in _tokens(node) if row is not None]


@dataclass(frozen=True)
class TokenQuery:
    code: str | None  # None: any code (``system|``)
    system: str | None = None
    system_mode: str = "any"  # any | none | equals


def parse(raw: str, modifier: str | None, param: SearchParam, ctx: Context) -> TokenQuery:
    check_length(raw)
    if modifier not in (None, "not"):
        raise BadModifier("modifier not supported")
    parts = [unescape(p) for p in split_escaped(raw, "|")]
    if param.column is not None:
        if len(parts) != 1 or not ID_RE.match(parts[0]):
            raise BadValue("the value must be a resource id")
        return TokenQuery(parts[0])
    if len(parts) == 1:
        return TokenQuery(parts[0][:MAX_CHARS])
    if len(parts) != 2 or parts == ["", ""]:
        raise BadValue("the value must be code, system|code, |code or system|")
    system, code = parts
    if not system:
        return TokenQuery(code[:MAX_CHARS], None, "none")
    return TokenQuery(code[:MAX_CHARS] or None, system[:MAX_CHARS], "equals")


def condition(q: TokenQuery) -> ColumnElement[bool]:
    conds: list[ColumnElement[bool]] = []
    if q.code is not None:
        conds.append(IdxToken.code == q.code)
    if q.system_mode == "none":
        conds.append(IdxToken.system.is_(None))
    elif q.system_mode == "equals":
        conds.append(IdxToken.system == q.system)
    return and_(*conds)


def column_condition(q: TokenQuery, column: Any) -> ColumnElement[bool]:
    result: ColumnElement[bool] = column == q.code
    return result


HANDLER = TypeHandler("token", IdxToken, extract, parse, condition, column_condition, frozenset({"not"}))

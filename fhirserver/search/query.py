"""Parse a FHIR search into a SearchRequest, and run it as one index-backed query.

``parse_search`` validates everything before any SQL exists: unknown parameters,
unsupported modifiers and malformed values are a 400 whose diagnostics name the
parameter but never echo its value (values are PHI). ``run_search`` ANDs the caller's
``restrict`` conditions (the authorization grant) into the same statement, so nothing
outside them is ever returned.

Semantics: a repeated parameter is AND, a comma inside a value is OR (``\\,`` is a
literal comma). Each parameter becomes ``res_id IN (SELECT res_id FROM idx_x WHERE
res_type=? AND param=? AND <value>)``, served by the ``(res_type, param, value...)``
index; negations (``:not``, ``:missing=true``) are ``NOT EXISTS`` probes of the owner
index. Only non-deleted rows are returned.

Sorting: ``_sort`` takes up to three keys among ``_id``, ``_lastUpdated`` and the date
parameters of the type, ``-`` for descending (a date parameter sorts by its earliest
value ascending and its latest descending; resources without it come last). The
default is ``-_lastUpdated``. ``res_id`` always breaks ties, in the direction of the
last key, so the order is total and paging is exact.

Paging: ``_count`` (default 20, capped at ``max_count``; 0 gives an empty page);
the next page is ``_cursor`` alone, an encrypted token holding the parameters,
count and the last row's position (see cursor.py and keyset.py). ``_format`` and
``_pretty`` belong to the HTTP layer and are ignored here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, false, func, or_, select
from sqlalchemy.orm import Session

from fhirserver.core.errors import FhirError
from fhirserver.models import IdxDate, ResourceRow
from fhirserver.search import keyset
from fhirserver.search.cursor import invalid_cursor, open_cursor, seal_cursor
from fhirserver.search.params import ID, LAST_UPDATED, SearchParam, params_for
from fhirserver.search.types import handler_for
from fhirserver.search.types.base import BadModifier, BadValue, Context, split_escaped

IGNORED = frozenset({"_format", "_pretty"})
MAX_PARAMS = 50
MAX_OR_VALUES = 100
MAX_SORT_KEYS = 3
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}(?::[A-Za-z][A-Za-z\-]{0,63})?$")


@dataclass(frozen=True)
class Clause:
    """One occurrence of a parameter: its parsed values are OR'd."""

    param: SearchParam
    modifier: str | None
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class SearchRequest:
    """A validated search. Holds PHI (the values), so its repr shows names only."""

    res_type: str
    clauses: tuple[Clause, ...] = field(repr=False)
    sort: tuple[SortKey, ...]
    count: int
    now: datetime
    params: tuple[tuple[str, str], ...] = field(repr=False)  # filters and _sort as given, for the cursor
    cursor_key: bytes = field(repr=False, default=b"")
    after: tuple[Any, ...] | None = field(repr=False, default=None)  # position: sort values + res_id

    @property
    def param_names(self) -> list[str]:
        """The parameter names of the search (no values): what an AuditEvent may record."""
        return sorted({name.split(":", 1)[0] for name, _ in self.params})


@dataclass(frozen=True)
class SearchPage:
    rows: list[ResourceRow]
    next_cursor: str | None


# -- parsing ----------------------------------------------------------------------------


def _shown(name: str) -> str:
    """The parameter name for a diagnostic, or a neutral phrase if it is not name-shaped."""
    return f"'{name}'" if _NAME_RE.match(name) else "(unnamed)"


def _bad(name: str, problem: str, code: str = "invalid") -> FhirError:
    return FhirError(400, code, f"Search parameter {_shown(name)}: {problem}", [name] if _NAME_RE.match(name) else None)


def _parse_count(value: str, max_count: int) -> int:
    if not re.fullmatch(r"\d{1,9}", value):
        raise _bad("_count", "must be a whole number of 0 or more")
    return min(int(value), max_count)


def _parse_sort(res_type: str, value: str) -> tuple[SortKey, ...]:
    keys: list[SortKey] = []
    for item in value.split(","):
        desc = item.startswith("-")
        name = item[1:] if desc else item
        param = params_for(res_type).get(name)
        if param is None or not param.sortable:
            raise _bad("_sort", "can sort on _id, _lastUpdated and date parameters only", "not-supported")
        if any(k.param.name == name for k in keys):
            raise _bad("_sort", "names a parameter twice")
        keys.append(SortKey(param, desc))
    if len(keys) > MAX_SORT_KEYS:
        raise _bad("_sort", f"takes at most {MAX_SORT_KEYS} keys")
    return tuple(keys)


def _lookup(res_type: str, name: str) -> tuple[SearchParam, str | None]:
    if "." in name:
        raise _bad(name.split(".", 1)[0], "chained parameters are not supported", "not-supported")
    if not _NAME_RE.match(name):
        raise FhirError(400, "not-supported", "A search parameter name is not valid")
    base, _, modifier = name.partition(":")
    param = params_for(res_type).get(base)
    if param is None:
        raise FhirError(400, "not-supported", f"Unknown search parameter {_shown(base)} for this resource type", [base])
    return param, modifier or None


def _parse_missing(name: str, param: SearchParam, parts: list[str]) -> Clause:
    if param.column is not None:
        raise _bad(name, "modifier not supported", "not-supported")
    if len(parts) != 1 or parts[0] not in ("true", "false"):
        raise _bad(name, ":missing takes true or false")
    return Clause(param, "missing", (parts[0] == "true",))


def _parse_clause(res_type: str, name: str, value: str, ctx: Context) -> Clause | None:
    param, modifier = _lookup(res_type, name)
    if "\x00" in value:  # no stored value holds one, and PostgreSQL refuses it as a query parameter
        raise _bad(name, "must not contain NUL characters")
    parts = [p for p in split_escaped(value, ",") if p]
    if not parts:
        return None  # an empty value is ignored (FHIR search: empty parameters are ignored)
    if len(parts) > MAX_OR_VALUES:
        raise _bad(name, f"takes at most {MAX_OR_VALUES} values")
    if modifier == "missing":
        return _parse_missing(name, param, parts)
    if param.column is not None and modifier is not None:
        raise _bad(name, "modifier not supported", "not-supported")
    handler = handler_for(param.type)
    try:
        values = tuple(handler.parse(p, modifier, param, ctx) for p in parts)
    except BadModifier as exc:
        raise _bad(name, str(exc), "not-supported") from exc
    except BadValue as exc:
        raise _bad(name, str(exc)) from exc
    return Clause(param, modifier, values)


def _build(
    res_type: str,
    params: Sequence[tuple[str, str]],
    *,
    cursor_key: bytes,
    count: int | None,
    max_count: int,
    default_count: int,
    ctx: Context,
) -> SearchRequest:
    if len(params) > MAX_PARAMS:
        raise FhirError(400, "invalid", f"A search takes at most {MAX_PARAMS} parameters")
    clauses: list[Clause] = []
    kept: list[tuple[str, str]] = []
    sort: tuple[SortKey, ...] | None = None
    for name, value in params:
        if name == "_count":
            if count is not None:
                raise _bad("_count", "may be given once")
            count = _parse_count(value, max_count)
        elif name == "_sort":
            if sort is not None:
                raise _bad("_sort", "may be given once")
            sort = _parse_sort(res_type, value)
            kept.append((name, value))
        else:
            clause = _parse_clause(res_type, name, value, ctx)
            if clause is not None:
                clauses.append(clause)
                kept.append((name, value))
    assert ctx.now is not None
    return SearchRequest(
        res_type,
        tuple(clauses),
        sort or (SortKey(LAST_UPDATED, True),),
        default_count if count is None else count,
        ctx.now,
        tuple(kept),
        cursor_key,
    )


def parse_search(
    res_type: str,
    params: Sequence[tuple[str, str]],
    *,
    cursor_key: bytes,
    max_count: int = 100,
    default_count: int = 20,
    server_base: str | None = None,
    now: datetime | None = None,
) -> SearchRequest:
    """Validate a search (query-string pairs in order) or open a ``_cursor``.

    Raises FhirError 400 (``not-supported`` for unknown parameters, modifiers and sort
    keys; ``invalid`` for malformed values, ``_count`` and cursors). ``server_base``
    makes absolute reference values to this server match; ``now`` anchors ``ap``.
    """
    params = [(n, v) for n, v in params if n not in IGNORED]
    if any(n == "_cursor" for n, _ in params):
        if len(params) != 1:
            raise FhirError(400, "invalid", "_cursor cannot be combined with other search parameters", ["_cursor"])
        return _from_cursor(res_type, params[0][1], cursor_key, server_base)
    ctx = Context(server_base, now or datetime.now(UTC))
    return _build(
        res_type, params, cursor_key=cursor_key, count=None, max_count=max_count, default_count=default_count, ctx=ctx
    )


# -- cursors ----------------------------------------------------------------------------


def _is_datetime_key(param: SearchParam) -> bool:
    return param.type == "date"


def _encode_value(v: Any) -> Any:
    return _utc(v).isoformat() if isinstance(v, datetime) else v


def _decode_position(req: SearchRequest, raw: Any) -> tuple[Any, ...]:
    kinds = [k.param for k in req.sort] + ([] if _has_id_key(req) else [ID])
    if not isinstance(raw, list) or len(raw) != len(kinds):
        raise invalid_cursor()
    out: list[Any] = []
    for param, v in zip(kinds, raw, strict=True):
        if v is None and param.column is None:
            out.append(None)
        elif isinstance(v, str) and _is_datetime_key(param):
            out.append(_utc(datetime.fromisoformat(v)))
        elif isinstance(v, str):
            out.append(v)
        else:
            raise invalid_cursor()
    return tuple(out)


def _from_cursor(res_type: str, token: str, cursor_key: bytes, server_base: str | None) -> SearchRequest:
    state = open_cursor(cursor_key, res_type, token)
    try:
        params = [(str(n), str(v)) for n, v in state["p"]]
        count = int(state["c"])
        now = datetime.fromisoformat(state["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise invalid_cursor() from exc
    req = _build(
        res_type,
        params,
        cursor_key=cursor_key,
        count=count,
        max_count=count,
        default_count=count,
        ctx=Context(server_base, now),
    )
    try:
        after = _decode_position(req, state.get("k"))
    except ValueError as exc:
        raise invalid_cursor() from exc
    return replace(req, after=after)


def next_cursor(req: SearchRequest, position: tuple[Any, ...]) -> str:
    state = {
        "p": [list(p) for p in req.params],
        "c": req.count,
        "n": req.now.isoformat(),
        "k": [_encode_value(v) for v in position],
    }
    return seal_cursor(req.cursor_key, req.res_type, state)


# -- SQL ----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _owned(table: Any, res_type: str, param: SearchParam) -> list[ColumnElement[bool]]:
    """Index rows of one parameter: served by the ``(res_type, param, value...)`` lookup index."""
    return [table.res_type == res_type, table.param == param.name]


def _probe(table: Any, res_type: str, param: SearchParam) -> list[ColumnElement[bool]]:
    """Index rows of one parameter *of the current resource row* (a correlated probe).

    These belong on the owner index ``(res_type, res_id)``: a handful of rows per
    resource. ``param || ''`` keeps the planner off the lookup index, which SQLite
    picks when it has no statistics (no ANALYZE) and which would read every row of
    the parameter for each result row. Portable SQL; PostgreSQL's choice is the same.
    """
    return [table.res_type == res_type, table.res_id == ResourceRow.res_id, (table.param + "") == param.name]


def clause_condition(res_type: str, clause: Clause) -> ColumnElement[bool]:
    """The SQL condition on ``resource`` rows for one parameter occurrence."""
    param = clause.param
    handler = handler_for(param.type)
    if param.column is not None:
        assert handler.column_condition is not None
        col = getattr(ResourceRow, param.column)
        return or_(*[handler.column_condition(v, col) for v in clause.values])
    table = handler.table
    owned = _owned(table, res_type, param)
    if clause.modifier == "missing":
        if clause.values[0]:
            return ~exists(select(table.pk).where(*_probe(table, res_type, param)))
        return ResourceRow.res_id.in_(select(table.res_id).where(*owned))
    match = or_(*[handler.condition(v) for v in clause.values])
    if clause.modifier in handler.negating_modifiers:
        return ~exists(select(table.pk).where(*_probe(table, res_type, param), match))
    return ResourceRow.res_id.in_(select(table.res_id).where(*owned, match))


def _has_id_key(req: SearchRequest) -> bool:
    return any(k.param.column == "res_id" for k in req.sort)


def _sort_expr(res_type: str, key: SortKey) -> keyset.OrderTerm:
    param = key.param
    if param.column is not None:
        return keyset.OrderTerm(getattr(ResourceRow, param.column), key.descending)
    bound = func.max(IdxDate.high) if key.descending else func.min(IdxDate.low)
    expr = select(bound).where(*_probe(IdxDate, res_type, param)).correlate(ResourceRow).scalar_subquery()
    return keyset.OrderTerm(expr, key.descending, nullable=True)


def sort_terms(req: SearchRequest) -> list[keyset.OrderTerm]:
    """The request's sort keys, then ``res_id`` (unless sorted on already) to make the order total."""
    terms = [_sort_expr(req.res_type, k) for k in req.sort]
    if not _has_id_key(req):
        terms.append(keyset.OrderTerm(ResourceRow.res_id, req.sort[-1].descending))
    return terms


def run_search(session: Session, req: SearchRequest, restrict: Sequence[ColumnElement[bool]] = ()) -> SearchPage:
    """One page of results, and the cursor of the next page when there is one.

    ``restrict`` (the authorization grant) is ANDed into the statement: rows outside it
    are never read, returned or counted. Fetches ``count + 1`` rows to learn whether a
    next page exists.
    """
    if req.count == 0:
        return SearchPage([], None)
    terms = sort_terms(req)
    where: list[ColumnElement[bool]] = [
        ResourceRow.res_type == req.res_type,
        ResourceRow.deleted == false(),
        *(clause_condition(req.res_type, c) for c in req.clauses),
        *restrict,
    ]
    if req.after is not None:
        where.append(keyset.after(terms, req.after))
    stmt = (
        select(ResourceRow, *(t.expr.label(f"k{i}") for i, t in enumerate(terms)))
        .where(*where)
        .order_by(*keyset.order_by(terms))
        .limit(req.count + 1)
    )
    result = session.execute(stmt).all()
    page = result[: req.count]
    cursor = None
    if len(result) > req.count:
        last = page[-1]
        position = tuple(_utc(v) if isinstance(v, datetime) else v for v in last[1:])
        cursor = next_cursor(req, position)
    return SearchPage([r[0] for r in page], cursor)

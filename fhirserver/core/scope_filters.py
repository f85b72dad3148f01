"""SMART 2 granular-scope filters (``?category=system|code``) as SQL and as a check on content.

A filter means exactly what the same FHIR search would: the SQL condition is built
by the parameter type's own search handler (``fhirserver.search.types``: parsing a
value and matching index rows), and the check on a resource about to be written reads
the index rows the indexer would give it (``fhirserver.search.indexing.extract``). So a scope and a
search never disagree about which resources match, and a type declaring a new
filter in ``fhirserver.core.resource_types.SCOPE_FILTERS`` needs no code here.

Anything that cannot be answered (a parameter the type lacks, a value the token
parser refuses) matches nothing: a filter only ever narrows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select

from fhirserver.core.scopes import Filter
from fhirserver.models import ResourceRow
from fhirserver.search.indexing import extract
from fhirserver.search.params import SearchParam, params_for
from fhirserver.search.types import handler_for
from fhirserver.search.types.base import BadModifier, BadValue, Context
from fhirserver.search.types.token import TokenQuery

_CTX = Context()


def _param(res_type: str, name: str) -> SearchParam | None:
    param = params_for(res_type).get(name)
    return param if param is not None and param.type == "token" and param.column is None else None


def _queries(param: SearchParam, values: tuple[str, ...]) -> tuple[TokenQuery, ...] | None:
    handler = handler_for(param.type)
    try:
        return tuple(handler.parse(v, None, param, _CTX) for v in values)
    except (BadValue, BadModifier):
        return None


def condition(res_type: str, filters: tuple[Filter, ...]) -> ColumnElement[bool]:
    """The SQL condition on ``resource`` rows of ``res_type`` that match every filter.

    Each filter is a correlated probe of the row's own index rows, ``EXISTS (SELECT 1
    FROM idx_token WHERE res_type=? AND res_id=resource.res_id AND param||''=? AND
    (code, system) matches one value)``, on the owner index: a handful of rows per
    resource, like the compartment probes in access.py. So ``can_see`` of one id stays
    one cheap query even when the category is on every message (``param || ''`` keeps
    the planner off the lookup index, see ``fhirserver.search.query._probe``).
    """
    conds: list[ColumnElement[bool]] = []
    for name, values in filters:
        param = _param(res_type, name)
        queries = _queries(param, values) if param is not None else None
        if param is None or queries is None:
            return false()
        handler = handler_for(param.type)
        table = handler.table
        match = or_(*[handler.condition(q) for q in queries])
        probe = [table.res_type == res_type, table.res_id == ResourceRow.res_id, (table.param + "") == param.name]
        conds.append(exists(select(table.pk).where(*probe, match)))
    return and_(*conds)


def _token_matches(q: TokenQuery, row: dict[str, Any]) -> bool:
    if q.code is not None and row.get("code") != q.code:
        return False
    if q.system_mode == "none":
        return row.get("system") is None
    if q.system_mode == "equals":
        return bool(row.get("system") == q.system)
    return True


def matches(res_type: str, filters: tuple[Filter, ...], data: dict[str, Any]) -> bool:
    """Whether a resource with this content would match every filter once indexed."""
    if not filters:
        return True
    entries = extract(res_type, data)
    for name, values in filters:
        param = _param(res_type, name)
        queries = _queries(param, values) if param is not None else None
        if param is None or queries is None:
            return False
        rows = entries.for_param(name)
        if not any(_token_matches(q, row) for q in queries for row in rows):
            return False
    return True

"""Sort order and keyset ("seek") paging over any list of sort terms.

A page starts strictly after the last row of the previous one in the total order
(sort values, then ``res_id``), so rows that exist unchanged throughout are neither
repeated nor skipped, however many rows are inserted or deleted meanwhile (an
OFFSET would shift). A term whose value may be missing (a date parameter the
resource lacks) sorts its missing values last in either direction, through a 0/1
flag ordered first, so the order is the same on SQLite and PostgreSQL (which
disagree on where NULLs go).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, or_


@dataclass(frozen=True)
class OrderTerm:
    expr: Any  # a column or scalar subquery of the row
    descending: bool
    nullable: bool = False


def _null_flag(expr: Any) -> Any:
    return case((expr.is_(None), 1), else_=0)


def _components(terms: list[OrderTerm]) -> list[tuple[Any, bool, bool]]:
    """(expr, descending, nullable) with a NULLs-last flag before each nullable term."""
    out: list[tuple[Any, bool, bool]] = []
    for t in terms:
        if t.nullable:
            out.append((_null_flag(t.expr), False, False))
        out.append((t.expr, t.descending, t.nullable))
    return out


def order_by(terms: list[OrderTerm]) -> list[Any]:
    return [e.desc() if desc else e.asc() for e, desc, _ in _components(terms)]


def _values(terms: list[OrderTerm], values: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for t, v in zip(terms, values, strict=True):
        if t.nullable:
            out.append(1 if v is None else 0)
        out.append(v)
    return out


def after(terms: list[OrderTerm], values: tuple[Any, ...]) -> ColumnElement[bool]:
    """Rows strictly after the row whose sort values are ``values``, in ``order_by(terms)``.

    Lexicographic: (a > x) OR (a = x AND b > y) OR ... where equality on a missing
    value is IS NULL and nothing sorts after a missing value within its flag group.
    """
    comps = _components(terms)
    vals = _values(terms, values)
    branches: list[ColumnElement[bool]] = []
    for i, (expr, desc, _) in enumerate(comps):
        v = vals[i]
        if v is None:
            continue  # no row is strictly after a missing value within the same flag group
        equal_before = [
            e.is_(None) if pv is None else e == pv for (e, _, _), pv in zip(comps[:i], vals[:i], strict=True)
        ]
        beyond = expr < v if desc else expr > v
        branches.append(and_(*equal_before, beyond))
    return or_(*branches) if branches else false()

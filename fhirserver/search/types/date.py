"""Date parameters: values as the [low, high] range of instants they cover (UTC).

A FHIR date is as precise as it is written: "1980" covers the whole year,
"1980-05-03T10:00:00Z" one second. Index rows store that range (``high`` inclusive,
to the microsecond); a Period stores start.low .. end.high, an open end reaching the
ends of time. Values without a time zone are taken as UTC (a date without a time
has no time zone in FHIR; we pick UTC so that a range never depends on the server).

Search prefixes follow R4 search §3.1.1.4.7 with S = the search range, T = the target:
eq S contains T; ne not eq; gt T ends after S; lt T starts before S; ge gt or eq;
le lt or eq; sa T starts after S ends; eb T ends before S starts; ap T overlaps S
widened by 10% of the distance between the value and now (the spec's suggestion).
A search value may stop at minutes (``2020-01-01T10:00``); stored values should not,
but are read leniently the same way.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, not_, or_

from fhirserver.models import IdxDate
from fhirserver.search.params import SearchParam
from fhirserver.search.types.base import BadValue, Context, Rows, TypeHandler, check_length, no_modifier

MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_US = timedelta(microseconds=1)


def _shift(value: datetime, delta: timedelta) -> datetime:
    """``value + delta``, clamped to [MIN, MAX] instead of overflowing."""
    try:
        return min(max(value + delta, MIN), MAX)
    except OverflowError:
        return MIN if delta < timedelta(0) else MAX


def _offset(tz: str | None) -> timedelta:
    if not tz or tz == "Z":
        return timedelta(0)
    sign = -1 if tz[0] == "-" else 1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("bad offset")
    return sign * timedelta(hours=hours, minutes=minutes)


def _time_range(y: int, mo: int, d: int, groups: tuple[str | None, ...]) -> tuple[datetime, datetime]:
    hh, mi, ss, frac, tz = groups
    assert hh is not None and mi is not None
    if ss is None:
        low = datetime(y, mo, d, int(hh), int(mi), tzinfo=UTC)
        width = timedelta(seconds=60) - _US
    else:
        second = min(int(ss), 59)  # a leap second 60 is read as the last second of the minute
        micro = int((frac or "")[:6].ljust(6, "0"))
        low = datetime(y, mo, d, int(hh), int(mi), second, micro, tzinfo=UTC)
        digits = min(len(frac), 6) if frac and ss != "60" else 0
        width = timedelta(microseconds=10 ** (6 - digits) - 1)
    offset = _offset(tz)
    return _shift(low, -offset), _shift(low, width - offset)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The [low, high] UTC instants a FHIR date/dateTime/instant covers; None if malformed."""
    m = _DATE_RE.match(text)
    if m is None:
        return None
    try:
        y = int(m[1])
        mo = int(m[2] or 1)
        d = int(m[3] or 1)
        if m[4] is not None:
            return _time_range(y, mo, d, (m[4], m[5], m[6], m[7], m[8]))
        low = datetime(y, mo, d, tzinfo=UTC)
        if m[3] is not None:
            end = datetime(y, mo, d, tzinfo=UTC)
        elif m[2] is not None:
            end = datetime(y, mo, calendar.monthrange(y, mo)[1], tzinfo=UTC)
        else:
            end = datetime(y, 12, 31, tzinfo=UTC)
        return low, end.replace(hour=23, minute=59, second=59, microsecond=999999)
    except ValueError:
        return None


def _node_range(node: Any) -> tuple[datetime, datetime] | None:
    if isinstance(node, str):
        return date_range(node)
    if isinstance(node, dict) and ("start" in node or "end" in node):  # Period
        start = date_range(node["start"]) if isinstance(node.get("start"), str) else None
        end = date_range(node["end"]) if isinstance(node.get("end"), str) else None
        low = start[0] if start else MIN
        high = end[1] if end else MAX
        return (low, high) if low <= high else None
    return None


def extract(nodes: list[Any], param: SearchParam, ctx: Context) -> Rows:
    rows: Rows = []
    for node in nodes:
        rng = _node_range(node)
        if rng is not None:
            rows.append({"low": rng[0], "high": rng[1]})
    return rows


@dataclass(frozen=True)
class DateQuery:
    prefix: str
    low: datetime
    high: datetime


def parse(raw: str, modifier: str | None, param: SearchParam, ctx: Context) -> DateQuery:
    check_length(raw)
    no_modifier(modifier)
    prefix, text = "eq", raw
    if raw[:2].isalpha():
        prefix, text = raw[:2], raw[2:]
        if prefix not in PREFIXES:
            raise BadValue("unknown prefix (use eq ne gt lt ge le sa eb ap)")
    rng = date_range(text)
    if rng is None:
        raise BadValue("the value is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)")
    low, high = rng
    if prefix == "ap":
        now = ctx.now or datetime.now(UTC)
        gap = abs(now - low) / 10
        low, high = _shift(low, -gap), _shift(high, gap)
    return DateQuery(prefix, low, high)


def range_condition(q: DateQuery, low: Any, high: Any) -> ColumnElement[bool]:
    """Whether a target [low, high] satisfies ``q`` (columns or SQL expressions)."""
    contained = and_(low >= q.low, high <= q.high)
    by_prefix: dict[str, ColumnElement[bool]] = {
        "eq": contained,
        "ne": not_(contained),
        "gt": high > q.high,
        "lt": low < q.low,
        "ge": or_(high > q.high, contained),
        "le": or_(low < q.low, contained),
        "sa": low > q.high,
        "eb": high < q.low,
        "ap": and_(low <= q.high, high >= q.low),
    }
    return by_prefix[q.prefix]


def condition(q: DateQuery) -> ColumnElement[bool]:
    return range_condition(q, IdxDate.low, IdxDate.high)


def column_condition(q: DateQuery, column: Any) -> ColumnElement[bool]:
    return range_condition(q, column, column)


HANDLER = TypeHandler("date", IdxDate, extract, parse, condition, column_condition)

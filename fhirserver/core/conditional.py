"""Conditional interactions: the criteria of ``If-None-Exist``, of a conditional update
(``PUT [type]?criteria``) and of a conditional delete (``DELETE [type]?criteria``), parsed
strictly, matched inside the caller's grant, and serialized per criteria.

Criteria are a search's query string without the ``?``. They are always strict: an unknown
or malformed parameter is a 400 (a typo must not make a condition match nothing, or
everything), and the paging and format parameters of a search have no meaning in them.
Matching runs the same search the caller could run, so a record outside the grant is never
matched and nothing about it is revealed. Two requests with the same criteria take the same
lock (a PostgreSQL transaction-level advisory lock; SQLite has one writer at a time), so
two identical conditional creates at the same moment make one resource.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl

from sqlalchemy import text
from sqlalchemy.orm import Session

from fhirserver.core.errors import FhirError

NOT_IN_CRITERIA = frozenset(
    {"_count", "_sort", "_cursor", "_format", "_pretty", "_summary", "_elements", "_include", "_revinclude", "_total"}
)


FORMAT_PARAMS = frozenset({"_format", "_pretty"})  # of the HTTP answer, not of the criteria


def parse_criteria(header: str, what: str = "If-None-Exist") -> list[tuple[str, str]]:
    """The criteria as (name, value) pairs, in order; 400 when they are empty or malformed."""
    raw = header.strip().removeprefix("?")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirError(400, "invalid", f"{what} is not a query string (name=value&...)") from exc
    return check_criteria(pairs, what)


def check_criteria(pairs: list[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    """Criteria from a query string already split (conditional update and delete): the same rules."""
    pairs = [(n, v) for n, v in pairs if n not in FORMAT_PARAMS]
    if not pairs:
        raise FhirError(400, "invalid", f"{what} names no search parameter")
    for name, _ in pairs:
        if name in NOT_IN_CRITERIA:
            raise FhirError(400, "invalid", f"{name} has no meaning in {what}")
    return pairs


def lock_criteria(session: Session, res_type: str, pairs: list[tuple[str, str]]) -> None:
    """Serialize the requests that use the same criteria on the same type, until commit."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: every write transaction begins IMMEDIATE, one at a time
    digest = hashlib.sha256(repr((res_type, sorted(pairs))).encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

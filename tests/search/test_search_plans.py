"""Core searches are index-backed: SQLite query plans (deterministic without statistics).

PostgreSQL plans depend on table statistics, so they are checked at scale by the later
benchmark issue; on SQLite the planner's choice is fixed by the schema and the SQL.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import false, select, text
from sqlalchemy.orm import Session

from fhirserver.models import ResourceRow
from fhirserver.search import keyset
from fhirserver.search.query import clause_condition, parse_search, sort_terms
from fhirserver.webmail.read_state import unread_query

CORE = [
    ("Patient", [("name", "zoe")]),
    ("Patient", [("family:exact", "Zoë"), ("birthdate", "ge1980-05")]),
    ("Patient", [("general-practitioner", "Practitioner/d1")]),
    (
        "Communication",
        [
            ("part-of:missing", "true"),
            ("recipient", "Practitioner/d1"),
            ("status:not", "completed,entered-in-error,stopped,unknown"),
            ("_sort", "-_lastUpdated"),
        ],
    ),
    ("Communication", [("part-of", "Communication/c1"), ("_sort", "sent")]),
    ("Communication", [("patient", "Patient/p1"), ("category", "webmail"), ("_sort", "-sent")]),
    ("Communication", [("recipient", "Practitioner/d1"), ("status", "completed"), ("_sort", "-sent")]),  # bench/
]


def plan(session: Session, res_type: str, params: list[tuple[str, str]]) -> list[str]:
    req = parse_search(res_type, params, cursor_key=os.urandom(32))
    terms = sort_terms(req)
    stmt = (
        select(ResourceRow.res_id, *(t.expr.label(f"k{i}") for i, t in enumerate(terms)))
        .where(
            ResourceRow.res_type == res_type,
            ResourceRow.deleted == false(),
            *(clause_condition(res_type, c) for c in req.clauses),
        )
        .order_by(*keyset.order_by(terms))
        .limit(req.count + 1)
    )
    sql = str(stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    return [row[-1] for row in session.execute(text("EXPLAIN QUERY PLAN " + sql))]


@pytest.mark.parametrize(("res_type", "params"), CORE)
def test_core_queries_use_the_index_tables_indexes(
    db_session: Session, res_type: str, params: list[tuple[str, str]]
) -> None:
    if db_session.get_bind().dialect.name != "sqlite":
        pytest.skip("plans checked on SQLite; PostgreSQL plans depend on statistics")
    steps = plan(db_session, res_type, params)
    idx_steps = [s for s in steps if " idx_" in s]
    assert idx_steps, steps
    assert all(s.startswith("SEARCH") and "USING INDEX" in s for s in idx_steps), steps
    assert not any(s.startswith("SCAN resource") for s in steps), steps
    # correlated probes (negations, :missing, sort values) go through the owner index
    probes = len([s for s in steps if "CORRELATED" in s])
    assert len([s for s in idx_steps if "_owner" in s]) == probes, steps


def test_unread_count_is_driven_by_the_recipient_index_and_probes_owner_indexes(db_session: Session) -> None:
    """$unread-count looks up the user's messages, then probes each one's own rows: it never reads
    every WebMail message's category or status row per message counted."""
    if db_session.get_bind().dialect.name != "sqlite":
        pytest.skip("plans checked on SQLite; PostgreSQL plans depend on statistics")
    stmt = unread_query("u1", ["Practitioner/d1", "Practitioner/d2"])
    sql = str(stmt.compile(db_session.get_bind(), compile_kwargs={"literal_binds": True}))
    steps = [row[-1] for row in db_session.execute(text("EXPLAIN QUERY PLAN " + sql))]
    searches = [s for s in steps if s.startswith(("SEARCH", "SCAN"))]
    assert searches[0].startswith("SEARCH idx_reference USING INDEX ix_idx_reference_lookup"), steps
    assert all(s.startswith("SEARCH") and "INDEX" in s for s in searches), steps
    tokens = [s for s in searches if " idx_token " in s]
    assert len(tokens) == 2 and all("ix_idx_token_owner" in s for s in tokens), steps

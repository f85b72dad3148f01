"""The audit table: one append-only row per AuditEvent, written with plain Core inserts.

``fhirserver.core.audit`` builds the BALP-shaped event; this module turns it into a row
(the event's JSON beside the columns auditors search: time, type, action, outcome, agent,
client, address, patient, entity, purposeOfUse, request id), inserts it, and renders
rows back as AuditEvent resources for read and search. No ORM objects, no version rows,
no generic index rows: the audit write is on every read, so it stays one INSERT.

Rows are never updated or deleted by the application; the sealer
(``fhirserver.core.audit_chain``) fills the seal columns once, after commit.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, false, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from fhirserver.core.errors import FhirError, not_found
from fhirserver.core.stored import Stored
from fhirserver.models import AuditLogRow

TABLE: Table = AuditLogRow.__table__  # type: ignore[assignment]
USER_SYSTEM = "urn:fhirserver:user"
CLIENT_SYSTEM = "urn:fhirserver:client"
REQUEST_SYSTEM = "urn:fhirserver:request-id"


REF_RE = re.compile(r"[A-Za-z]{1,64}/[A-Za-z0-9\-.]{1,64}")


def _clip(value: Any, size: int) -> str | None:
    """A column value: text only, cut to the column, without NUL (PostgreSQL text refuses it)."""
    if not isinstance(value, str) or not value:
        return None
    return value.replace("\x00", "")[:size] or None


def _ref(value: Any) -> str | None:
    """A reference column holds a well-formed ``Type/id`` only (a failed request's id may be
    anything a client sent; it stays in the event's JSON, unsearchable)."""
    return value if isinstance(value, str) and REF_RE.fullmatch(value) else None


def row_for(event: dict[str, Any]) -> dict[str, Any]:
    """The table row of a finished AuditEvent (``id``, ``meta`` and ``recorded`` set)."""
    recorded = datetime.fromisoformat(event["recorded"])
    if recorded.tzinfo is None:
        recorded = recorded.replace(tzinfo=UTC)
    row: dict[str, Any] = {
        "event_id": event["id"],
        "recorded": recorded,
        "type_code": (event.get("type") or {}).get("code") or "unknown",
        "subtype": _clip(((event.get("subtype") or [{}])[0] or {}).get("code"), 64),
        "action": (event.get("action") or "E")[:1],
        "outcome": (event.get("outcome") or "0")[:1],
        "agent_user": None,
        "agent_ref": None,
        "client_id": None,
        "address": None,
        "patient_ref": None,
        "entity_ref": None,
        "purpose_of_use": None,
        "request_id": None,
    }
    for agent in event.get("agent") or []:
        who = agent.get("who") or {}
        ident = who.get("identifier") or {}
        if ident.get("system") == USER_SYSTEM:
            row["agent_user"] = _clip(ident.get("value"), 64)
            row["agent_ref"] = _ref(who.get("reference"))
            for pou in agent.get("purposeOfUse") or []:
                row["purpose_of_use"] = _clip(((pou.get("coding") or [{}])[0]).get("code"), 32)
        elif ident.get("system") == CLIENT_SYSTEM:
            row["client_id"] = None if ident.get("value") == "none" else _clip(ident.get("value"), 255)
            row["address"] = _clip((agent.get("network") or {}).get("address"), 64)
    for ent in event.get("entity") or []:
        what = ent.get("what") or {}
        code = (ent.get("role") or {}).get("code")
        if code == "1" and what.get("reference"):
            row["patient_ref"] = _ref(what["reference"])
        elif code == "4" and what.get("reference"):
            row["entity_ref"] = _ref(what["reference"])
        elif (what.get("identifier") or {}).get("system") == REQUEST_SYSTEM:
            row["request_id"] = _clip(what["identifier"].get("value"), 64)
    row["content"] = json.dumps(event, separators=(",", ":")).encode()
    return row


def append(target: Session | Connection, row: dict[str, Any]) -> None:
    """Insert one row in the caller's transaction (writes: it commits with the change)."""
    target.execute(insert(TABLE), [row])


def append_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert a batch with one executemany (the batch writer's group commit)."""
    if rows:
        conn.execute(insert(TABLE), rows)


# -- reading ------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored(event_id: str, recorded: datetime, content: bytes) -> Stored:
    return Stored("AuditEvent", event_id, 1, _utc(recorded), bytes(content))


def read(session: Session, event_id: str) -> Stored:
    row = session.execute(
        select(TABLE.c.event_id, TABLE.c.recorded, TABLE.c.content).where(TABLE.c.event_id == event_id)
    ).first()
    if row is None:
        raise not_found("AuditEvent", event_id)
    return _stored(*row)


def _ref_condition(column: Any, q: Any, default_type: str | None) -> ColumnElement[bool]:
    if q.target_id is None:
        return false()
    if q.target_type is not None:
        return column == f"{q.target_type}/{q.target_id}"  # type: ignore[no-any-return]
    if default_type is not None:
        return column == f"{default_type}/{q.target_id}"  # type: ignore[no-any-return]
    return column.like(f"%/{q.target_id}")  # type: ignore[no-any-return]


TOKEN_COLUMNS = {"outcome": "outcome", "action": "action", "type": "type_code", "subtype": "subtype"}


def clause_condition(clause: Any) -> ColumnElement[bool]:
    """One parsed search clause (fhirserver.search.query.Clause) as SQL over the audit columns."""
    from fhirserver.search.types.date import range_condition

    name = clause.param.name
    if clause.modifier == "missing":
        raise FhirError(400, "not-supported", f"Search parameter '{name}': modifier not supported")
    conds: list[ColumnElement[bool]] = []
    for v in clause.values:
        if name in ("date", "_lastUpdated"):
            conds.append(range_condition(v, TABLE.c.recorded, TABLE.c.recorded))
        elif name == "_id":
            conds.append(TABLE.c.event_id == v.code)
        elif name in TOKEN_COLUMNS:
            conds.append(TABLE.c[TOKEN_COLUMNS[name]] == v.code if v.code is not None else TABLE.c.event_id.isnot(None))
        elif name == "patient":
            conds.append(_ref_condition(TABLE.c.patient_ref, v, "Patient"))
        elif name == "agent":
            conds.append(_ref_condition(TABLE.c.agent_ref, v, None))
        elif name == "entity":
            conds.append(_ref_condition(TABLE.c.entity_ref, v, None))
        else:
            raise FhirError(400, "not-supported", f"Search parameter '{name}' is not supported on AuditEvent")
    combined = or_(*conds)
    if clause.modifier == "not":
        return ~combined
    return combined


def _sort_column(key: Any) -> Any:
    if key.param.name in ("date", "_lastUpdated"):
        return TABLE.c.recorded
    if key.param.name == "_id":
        return TABLE.c.event_id
    raise FhirError(400, "not-supported", f"AuditEvent cannot be sorted by '{key.param.name}'")


def search(session: Session, req: Any) -> tuple[list[Stored], str | None]:
    """One page of an AuditEvent search (a fhirserver.search.query.SearchRequest), keyset-paged.

    Same ``_count``, ``_sort`` and ``_cursor`` behaviour as every other search; the sort
    ends with ``event_id`` to make the order total.
    """
    from fhirserver.search import keyset
    from fhirserver.search.query import next_cursor

    if req.count == 0:
        return [], None
    terms = [keyset.OrderTerm(_sort_column(k), k.descending) for k in req.sort]
    if not any(k.param.name == "_id" for k in req.sort):
        terms.append(keyset.OrderTerm(TABLE.c.event_id, req.sort[-1].descending))
    where = [clause_condition(c) for c in req.clauses]
    if req.after is not None:
        where.append(keyset.after(terms, req.after))
    stmt = (
        select(
            TABLE.c.event_id, TABLE.c.recorded, TABLE.c.content, *(t.expr.label(f"k{i}") for i, t in enumerate(terms))
        )
        .where(*where)
        .order_by(*keyset.order_by(terms))
        .limit(req.count + 1)
    )
    result = session.execute(stmt).all()
    page = result[: req.count]
    cursor = None
    if len(result) > req.count:
        last = page[-1]
        position = tuple(_utc(v) if isinstance(v, datetime) else v for v in last[3:])
        cursor = next_cursor(req, position)
    return [_stored(r[0], r[1], r[2]) for r in page], cursor

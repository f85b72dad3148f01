"""A patient's chart of messages: ``Communication?subject=<ref>&_sort=-sent`` from the ``chart`` table.

The generic search intersects the subject's index rows and sorts every match by a
correlated ``max(sent)``, so a chart page costs as much as the patient has messages (at a
million messages, p99 37 ms, mostly cache misses). The ``chart`` table holds one row per
(Communication, subject reference) with the message's ``sent`` as the search sorts it, under
one composite (subject, has_sent, sent, id) index: a page reads its ``_count + 1`` rows,
newest first, and stops.

It is derived data (docs/webmail-profile.md, "Chart"): the rows come from the message's own
index rows only (its ``subject`` references and its ``sent`` range), written by a write rule
in the message's transaction, and ``fhirserver mailbox check`` recomputes and compares them.
A deleted message keeps its row as it keeps its index rows; the search skips it on the
joined resource row, like the generic one.

:func:`plan` answers any Communication search with exactly one ``subject`` (or ``patient``)
value of a known type and ``_sort=-sent``; every other parameter becomes a condition on the
joined resource row, exactly as in the generic search, as do the grant conditions. The
order (messages with ``sent`` newest first, then those without, ties by id descending) and
the cursor positions are the generic ones, so pages may alternate between the two paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, false, insert, or_, select, true
from sqlalchemy.orm import Session

from fhirserver.core.hooks import WriteContext
from fhirserver.core.principal import Principal
from fhirserver.models import ChartRow, ResourceRow
from fhirserver.search.query import SearchPage, SearchRequest, clause_condition, next_cursor
from fhirserver.webmail.mailbox import chunks, next_ids, references_of, sent_of

SUBJECT_PARAMS = ("subject", "patient")  # both index Communication.subject (patient: Patient only)

Key = tuple[str, str]  # (message id, subject reference)


def _utc(value: datetime | None) -> datetime | None:
    """One form for instants from either driver (SQLite hands back naive UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _rows(message_id: str, subjects: Iterable[str], sent: datetime | None) -> list[dict[str, Any]]:
    return [
        {"message_id": message_id, "subject_ref": ref, "has_sent": sent is not None, "sent": sent}
        for ref in sorted(set(subjects))
    ]


def rows_of_index(message_id: str, index: Any) -> list[dict[str, Any]]:
    """The chart rows of one message from the index rows its write produced (no read-back)."""
    subjects = [f"{r['target_type']}/{r['target_id']}" for r in index.of("reference") if r["param"] == "subject"]
    highs = [r["high"] for r in index.of("date") if r["param"] == "sent" and r.get("high") is not None]
    return _rows(message_id, subjects, max(highs) if highs else None)


def after_communication(ctx: WriteContext) -> None:
    """The write rule that keeps the chart: the message's rows, in its transaction."""
    rows = rows_of_index(ctx.res_id, ctx.index)  # every write hands its index rows to the rules
    if not ctx.created:
        ctx.session.execute(delete(ChartRow).where(ChartRow.message_id == ctx.res_id))
    if rows:
        ctx.session.execute(insert(ChartRow), rows)


def _as_dict(key: Key, sent: datetime | None) -> dict[str, Any]:
    return _rows(key[0], [key[1]], sent)[0]


def expected_rows(session: Session, message_ids: list[str]) -> dict[Key, datetime | None]:
    """(message, subject) -> sent, from the messages' index rows alone (deleted ones included)."""
    out: dict[Key, datetime | None] = {}
    for chunk in chunks(message_ids):
        sent = sent_of(session, chunk)
        for mid, ref in references_of(session, chunk, "subject"):
            out[(mid, ref)] = sent.get(mid)
    return out


@dataclass(frozen=True)
class Difference:
    message_id: str
    subject_ref: str
    problem: str  # "missing" | "unexpected" | "differs"


def check_page(session: Session, ids: list[str], *, fix: bool) -> list[Difference]:
    """Compare the chart rows of these messages with the recomputed ones; ``fix`` rewrites those that differ."""
    want = expected_rows(session, ids)
    have: dict[Key, datetime | None] = {}
    for chunk in chunks(ids):
        for mid, ref, has_sent, sent in session.execute(
            select(ChartRow.message_id, ChartRow.subject_ref, ChartRow.has_sent, ChartRow.sent).where(
                ChartRow.message_id.in_(chunk)
            )
        ):
            have[(mid, ref)] = sent if has_sent else None
    diffs: list[Difference] = []
    for key in sorted(set(want) | set(have)):
        if key not in want:
            diffs.append(Difference(*key, "unexpected"))
        elif key not in have:
            diffs.append(Difference(*key, "missing"))
        elif _utc(want[key]) != _utc(have[key]):
            diffs.append(Difference(*key, "differs"))
    if fix and diffs:
        for d in diffs:
            session.execute(
                delete(ChartRow).where(ChartRow.message_id == d.message_id, ChartRow.subject_ref == d.subject_ref)
            )
        keys = [(d.message_id, d.subject_ref) for d in diffs if d.problem != "unexpected"]
        if fixed := [_as_dict(k, want[k]) for k in keys]:
            session.execute(insert(ChartRow), fixed)
        session.flush()
    return diffs


def check(session: Session, *, fix: bool = False, page: int = 2000) -> list[Difference]:
    """Recompute the chart from the messages' index rows and list what differs, page by page of ids."""
    diffs: list[Difference] = []
    after = ""
    while ids := next_ids(session, after, page, ChartRow.message_id):
        diffs += check_page(session, ids, fix=fix)
        after = ids[-1]
    return diffs


# -- the search --------------------------------------------------------------------------------


def _chart_ref(req: SearchRequest) -> str | None:
    """The one subject reference of a chart-shaped request, or None when it is not one."""
    if req.res_type != "Communication" or len(req.sort) != 1:
        return None
    key = req.sort[0]
    if key.param.name != "sent" or not key.descending:
        return None
    subjects = [c for c in req.clauses if c.param.name in SUBJECT_PARAMS]
    if len(subjects) != 1 or subjects[0].modifier is not None or len(subjects[0].values) != 1:
        return None
    value = subjects[0].values[0]
    if value.target_type is None or value.target_id is None:
        return None
    return f"{value.target_type}/{value.target_id}"


def plan(
    session: Session, principal: Principal, req: SearchRequest, restrict: Sequence[ColumnElement[bool]]
) -> SearchPage | None:
    """The page from the chart table when ``req`` is a chart search; else None (another planner or generic)."""
    ref = _chart_ref(req)
    if ref is None:
        return None
    if req.count == 0:
        return SearchPage([], None)
    others = [clause_condition(req.res_type, c) for c in req.clauses if c.param.name not in SUBJECT_PARAMS]
    if any(c.param.name == "patient" for c in req.clauses) and not ref.startswith("Patient/"):
        return SearchPage([], None)  # ``patient`` only ever matches a Patient subject
    conds: list[ColumnElement[bool]] = [
        ChartRow.subject_ref == ref,
        ResourceRow.deleted == false(),
        *others,
        *restrict,
    ]
    if req.after is not None:
        conds.append(_after(*req.after))
    stmt = (
        select(ResourceRow, ChartRow.has_sent, ChartRow.sent)
        .select_from(ChartRow)
        .join(ResourceRow, and_(ResourceRow.res_type == "Communication", ResourceRow.res_id == ChartRow.message_id))
        .where(*conds)
        .order_by(ChartRow.has_sent.desc(), ChartRow.sent.desc(), ChartRow.message_id.desc())
        .limit(req.count + 1)
    )
    result = session.execute(stmt).all()
    page = result[: req.count]
    cursor = None
    if len(result) > req.count:
        row, has_sent, sent = page[-1]
        cursor = next_cursor(req, (_utc(sent) if has_sent else None, row.res_id))
    return SearchPage([r[0] for r in page], cursor)


def _after(sent: datetime | None, last_id: str) -> ColumnElement[bool]:
    """Rows after (sent, id) in the chart order: the generic cursor's position, read on this table."""
    if sent is None:  # among the messages without ``sent`` (they come last)
        return and_(ChartRow.has_sent == false(), ChartRow.message_id < last_id)
    return or_(
        ChartRow.has_sent == false(),
        and_(
            ChartRow.has_sent == true(),
            or_(ChartRow.sent < sent, and_(ChartRow.sent == sent, ChartRow.message_id < last_id)),
        ),
    )

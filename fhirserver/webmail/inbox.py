"""The inbox search served from the mailbox: ``Communication?recipient=<me>&_sort=-sent``.

The generic search intersects the recipient index rows with the other parameters and
sorts every match by a correlated ``max(sent)``, so an inbox page costs as much as the
inbox is large. The mailbox holds exactly the same messages for the signed-in user
(docs/webmail-profile.md, "Mailbox"), ordered by ``ix_mailbox_user_sent``: a page reads
its ``_count + 1`` rows and stops.

:func:`plan` answers only the inbox's own shape and returns None for everything else, so
the generic search runs unchanged:

- ``recipient`` is the user's own identity (``fhirUser``), or for staff their one provider;
- optionally ``status=completed`` and ``category=<WebMail system>|webmail`` (every
  Communication is completed WebMail: the rules stamp both on every write);
- ``_sort=-sent``; any ``_count``, and the next-page cursors of either path.

The result is the generic one: the same grant conditions (``restrict``) on the same
``resource`` rows, the same order (``sent`` descending, then id descending) and the same
cursor positions (``fhirserver.search.query.next_cursor``), so a page may come from one
path and the next from the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import Session

from fhirserver.core.principal import Principal
from fhirserver.models import MailboxRow, ResourceRow
from fhirserver.search.query import SearchPage, SearchRequest, next_cursor
from fhirserver.webmail import profile


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _mailbox_ref(principal: Principal) -> str | None:
    """The one reference whose mail is exactly this user's mailbox, if there is one."""
    if principal.fhir_user:
        return principal.fhir_user
    if len(principal.staff_of) == 1:
        return principal.staff_of[0]
    return None


def _single(values: tuple[Any, ...]) -> Any:
    return values[0] if len(values) == 1 else None


def _is_inbox(req: SearchRequest, me: str) -> bool:
    if len(req.sort) != 1 or req.sort[0].param.name != "sent" or not req.sort[0].descending:
        return False
    seen: set[str] = set()
    for clause in req.clauses:
        name, value = clause.param.name, _single(clause.values)
        if clause.modifier is not None or value is None or name in seen:
            return False
        seen.add(name)
        if name == "recipient":
            if value.target_type is None or f"{value.target_type}/{value.target_id}" != me:
                return False
        elif name == "status":
            if (value.code, value.system_mode) != ("completed", "any"):
                return False
        elif name == "category":
            wanted = (profile.CATEGORY_CODE, profile.CATEGORY_SYSTEM, "equals")
            if (value.code, value.system, value.system_mode) != wanted:
                return False
        else:
            return False
    return "recipient" in seen


def plan(
    session: Session, principal: Principal, req: SearchRequest, restrict: Sequence[ColumnElement[bool]]
) -> SearchPage | None:
    """The page from the mailbox when ``req`` is the signed-in user's inbox; else None (generic search)."""
    me = _mailbox_ref(principal)
    if req.res_type != "Communication" or not principal.user_id or me is None or not _is_inbox(req, me):
        return None
    uid = principal.user_id
    if not session.execute(select(exists().where(MailboxRow.user_id == uid))).scalar():
        return None  # no rows (an account the mailbox does not know yet): the generic search answers
    if req.count == 0:
        return SearchPage([], None)
    conds: list[ColumnElement[bool]] = [
        MailboxRow.user_id == uid,
        MailboxRow.deleted == false(),
        ResourceRow.deleted == false(),
        *restrict,
    ]
    if req.after is not None:
        sent, last_id = req.after
        if sent is None:
            return SearchPage([], None)  # after the messages without ``sent``: there are none here
        conds.append(or_(MailboxRow.sent < sent, and_(MailboxRow.sent == sent, MailboxRow.message_id < last_id)))
    stmt = (
        select(ResourceRow, MailboxRow.sent)
        .select_from(MailboxRow)
        .join(
            ResourceRow,
            and_(ResourceRow.res_type == "Communication", ResourceRow.res_id == MailboxRow.message_id),
        )
        .where(*conds)
        .order_by(MailboxRow.sent.desc(), MailboxRow.message_id.desc())
        .limit(req.count + 1)
    )
    result = session.execute(stmt).all()
    page = result[: req.count]
    cursor = None
    if len(result) > req.count:
        row, sent = page[-1]
        cursor = next_cursor(req, (_utc(sent), row.res_id))
    return SearchPage([r[0] for r in page], cursor)

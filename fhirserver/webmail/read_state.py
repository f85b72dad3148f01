"""Read state per (message, user): marking, the live unread count, and read receipts.

Absence of a row means unread. The unread count is a live query (no cache) over the
user's mailbox rows (``fhirserver.webmail.mailbox``), which every read-state change here
updates in the same transaction, so it is exact the moment a message commits or is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Select, and_, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from fhirserver.models import IdxReference, ReadState, ResourceRow
from fhirserver.webmail import mailbox


def mark_read(session: Session, communication_id: str, user_id: str, reader_ref: str) -> None:
    """Record the read (once) and set the user's mailbox row read, in the same transaction."""
    if session.get(ReadState, (communication_id, user_id)) is None:
        state = ReadState(
            communication_id=communication_id, user_id=user_id, reader_ref=reader_ref, read_at=datetime.now(UTC)
        )
        session.add(state)
        session.flush()
        mailbox.set_read(session, communication_id, user_id, state.read_at)


def mark_unread(session: Session, communication_id: str, user_id: str) -> None:
    session.execute(
        delete(ReadState).where(ReadState.communication_id == communication_id, ReadState.user_id == user_id)
    )
    mailbox.set_read(session, communication_id, user_id, None)


def unread_query(
    user_id: str, recipient_refs: list[str], grant_conditions: Sequence[ColumnElement[bool]] = ()
) -> Select[tuple[int]]:
    """The live count of WebMail addressed to any of ``recipient_refs`` that this user has not read.

    Driven by the recipient lookup index; every other condition is a probe of one message's own
    rows. ``param || ''`` keeps those probes on the owner indexes: without statistics SQLite would
    otherwise pick the ``(res_type, param, code)`` lookup index and read every WebMail message's
    category row for each message counted (see ``fhirserver.search.query._probe``).
    ``grant_conditions`` are what the token's scopes add (granular filters): a message the
    grant cannot read is not counted either.
    """
    by_type: dict[str, list[str]] = {}
    for ref in recipient_refs:
        t, _, i = ref.partition("/")
        by_type.setdefault(t, []).append(i)
    recipient_match = [
        and_(IdxReference.target_type == t, IdxReference.target_id.in_(ids)) for t, ids in by_type.items()
    ]
    return select(func.count(func.distinct(IdxReference.res_id))).where(
        IdxReference.res_type == "Communication",
        IdxReference.param == "recipient",
        or_(*recipient_match),
        exists(
            select(ResourceRow.res_id).where(
                ResourceRow.res_type == "Communication",
                ResourceRow.res_id == IdxReference.res_id,
                ResourceRow.deleted.is_(False),
                *grant_conditions,
            )
        ),
        *mailbox.completed_webmail(IdxReference.res_id),
        ~exists(
            select(ReadState.user_id).where(
                ReadState.communication_id == IdxReference.res_id,
                ReadState.user_id == user_id,
            )
        ),
    )


def unread_count(
    session: Session, user_id: str, recipient_refs: list[str], grant_conditions: Sequence[ColumnElement[bool]] = ()
) -> int:
    """WebMail addressed to any of ``recipient_refs`` that this user has not read (inside the grant).

    Counted over the user's mailbox rows (``fhirserver.webmail.mailbox``), which hold exactly
    the messages addressed to the user's identity or, for staff, their providers
    (docs/webmail-profile.md, "Mailbox"). ``unread_query`` is the same count from the
    resources and index rows: the tests compare the two.
    """
    if not recipient_refs:
        return 0
    return mailbox.unread_count(session, user_id, grant_conditions)


def unread_count_from_resources(
    session: Session, user_id: str, recipient_refs: list[str], grant_conditions: Sequence[ColumnElement[bool]] = ()
) -> int:
    """The unread count without the mailbox (the definition the mailbox must agree with)."""
    if not recipient_refs:
        return 0
    return int(session.execute(unread_query(user_id, recipient_refs, grant_conditions)).scalar_one())


def read_receipts(session: Session, user_id: str | None, ids: list[str]) -> dict[str, tuple[bool, bool]]:
    """For each message id: (read by this user, read by any user of one of its recipients)."""
    if not ids:
        return {}
    mine: set[str] = set()
    if user_id:
        mine = set(
            session.execute(
                select(ReadState.communication_id).where(
                    ReadState.communication_id.in_(ids), ReadState.user_id == user_id
                )
            ).scalars()
        )
    by_recipient = set(
        session.execute(
            select(ReadState.communication_id)
            .join(
                IdxReference,
                and_(
                    IdxReference.res_type == "Communication",
                    IdxReference.res_id == ReadState.communication_id,
                    IdxReference.param == "recipient",
                    IdxReference.target_type + "/" + IdxReference.target_id == ReadState.reader_ref,
                ),
            )
            .where(ReadState.communication_id.in_(ids))
        ).scalars()
    )
    return {i: (i in mine, i in by_recipient) for i in ids}

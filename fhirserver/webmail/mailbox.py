"""The mailbox: one row per (WebMail message, user who receives it), with its sent time and read state.

The inbox page and the unread count read this table through one composite index each,
instead of intersecting the generic index tables (which cannot hold a (user, read, sent)
index) and counting every match. It is derived data, kept exact in the transaction of
every change it depends on (docs/webmail-profile.md, "Mailbox" states the invariant):

- a message's rows are written by the WebMail rules in the message's own transaction;
- ``$mark-read`` / ``$mark-unread`` update the user's row with the read-state row;
- a user's rows are recomputed when their identity or staff assignments change
  (``smart_auth`` calls :func:`recompute_user`: smart_auth may import fhirserver, never the
  reverse; the users of a recipient come through ``ports.MailboxUsers``).

:func:`expected_rows` computes the rows from the resources, index rows and read-state rows
alone; the migration's backfill and ``fhirserver mailbox check`` compare against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, exists, false, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fhirserver.core import ports
from fhirserver.core.hooks import WriteContext
from fhirserver.models import IdxDate, IdxReference, IdxToken, MailboxRow, MailboxUnreadRow, ReadState, ResourceRow
from fhirserver.webmail import profile


@dataclass(frozen=True)
class Expected:
    """What one mailbox row must hold."""

    recipient_ref: str
    sent: datetime
    read: bool
    read_at: datetime | None
    deleted: bool


Key = tuple[str, str]  # (message id, user id)


def _naive_utc(value: datetime) -> datetime:
    """Compare instants independently of the driver (SQLite hands back naive UTC)."""
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def completed_webmail(message_id: Any) -> list[ColumnElement[bool]]:
    """Conditions: the Communication ``message_id`` is WebMail (its category) and completed.

    Probes of the message's own token rows; ``param || ''`` keeps them on the owner index
    (see ``read_state.unread_query``).
    """
    return [
        exists(
            select(IdxToken.pk).where(
                IdxToken.res_type == "Communication",
                IdxToken.res_id == message_id,
                (IdxToken.param + "") == "category",
                IdxToken.code == profile.CATEGORY_CODE,
                IdxToken.system == profile.CATEGORY_SYSTEM,
            )
        ),
        exists(
            select(IdxToken.pk).where(
                IdxToken.res_type == "Communication",
                IdxToken.res_id == message_id,
                (IdxToken.param + "") == "status",
                IdxToken.code == "completed",
            )
        ),
    ]


def _webmail_messages(message_ids: Iterable[str] | None) -> Select[tuple[str, bool]]:
    """Completed WebMail Communications (deleted ones included: their index rows stay)."""
    conds: list[ColumnElement[bool]] = [
        ResourceRow.res_type == "Communication",
        *completed_webmail(ResourceRow.res_id),
    ]
    if message_ids is not None:
        conds.append(ResourceRow.res_id.in_(list(message_ids)))
    return select(ResourceRow.res_id, ResourceRow.deleted).where(*conds)


def _facts(session: Session, message_ids: list[str] | None) -> dict[str, tuple[bool, datetime, list[str]]]:
    """message id -> (deleted, sent as the search sorts it, recipient references)."""
    msgs = {mid: deleted for mid, deleted in session.execute(_webmail_messages(message_ids)).all()}
    if not msgs:
        return {}
    ids = list(msgs)
    recipients: dict[str, list[str]] = {}
    sent: dict[str, datetime] = {}
    for chunk in chunks(ids):
        for mid, ref in references_of(session, chunk, "recipient"):
            recipients.setdefault(mid, []).append(ref)
        sent.update(sent_of(session, chunk))
    return {mid: (msgs[mid], sent[mid], sorted(set(recipients.get(mid, [])))) for mid in ids if mid in sent}


def sent_of(session: Session, message_ids: list[str]) -> dict[str, datetime]:
    """message id -> its ``sent`` as the search sorts it (the upper bound of its range)."""
    rows = session.execute(
        select(IdxDate.res_id, func.max(IdxDate.high))
        .where(IdxDate.res_type == "Communication", IdxDate.res_id.in_(message_ids), (IdxDate.param + "") == "sent")
        .group_by(IdxDate.res_id)
    ).all()
    return {mid: high for mid, high in rows}


def references_of(session: Session, message_ids: list[str], param: str) -> list[tuple[str, str]]:
    """(message id, ``Type/id``) for each ``param`` reference of these messages."""
    rows = session.execute(
        select(IdxReference.res_id, IdxReference.target_type, IdxReference.target_id).where(
            IdxReference.res_type == "Communication",
            IdxReference.res_id.in_(message_ids),
            (IdxReference.param + "") == param,
        )
    ).all()
    return [(mid, f"{ttype}/{tid}") for mid, ttype, tid in rows]


def chunks(ids: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _read_states(session: Session, keys: Iterable[Key]) -> dict[Key, datetime]:
    wanted = set(keys)
    out: dict[Key, datetime] = {}
    mids = sorted({m for m, _ in wanted})
    for chunk in chunks(mids):
        for mid, uid, read_at in session.execute(
            select(ReadState.communication_id, ReadState.user_id, ReadState.read_at).where(
                ReadState.communication_id.in_(chunk)
            )
        ).all():
            if (mid, uid) in wanted:
                out[(mid, uid)] = read_at
    return out


def expected_rows(
    session: Session, message_ids: list[str] | None = None, only_user: tuple[str, list[str]] | None = None
) -> dict[Key, Expected]:
    """The mailbox rows the resources call for: of the given messages (all when None).

    ``only_user`` = (user id, that user's recipient references) limits the result to one
    user, whose references the caller knows (the accounts side, on a change of identity or
    assignments); otherwise the users of each recipient come through ``ports.MailboxUsers``.
    """
    facts = _facts(session, message_ids)
    refs = sorted({r for _, _, rs in facts.values() for r in rs})
    if only_user is not None:
        uid, mine = only_user
        users = [(uid, r) for r in mine if r in set(refs)]
    else:
        users = ports.mailbox_users().users_for(session, refs) if refs else []
    targets = _targets(facts, users)
    reads = _read_states(session, targets)
    return {
        key: Expected(ref, sent, key in reads, reads.get(key), deleted) for key, (ref, sent, deleted) in targets.items()
    }


def _targets(
    facts: dict[str, tuple[bool, datetime, list[str]]], users: list[tuple[str, str]]
) -> dict[Key, tuple[str, datetime, bool]]:
    """(message, user) -> (the reference that reaches the user, sent, deleted), from the messages'
    facts (as :func:`_facts` gives them) and the (user id, reference) pairs of their recipients."""
    by_ref: dict[str, list[str]] = {}
    for uid, ref in users:
        by_ref.setdefault(ref, []).append(uid)
    targets: dict[Key, tuple[str, datetime, bool]] = {}
    for mid, (deleted, sent, recipients) in facts.items():
        for ref in recipients:  # sorted: the smallest reference through which a user is reached wins
            for uid in by_ref.get(ref, []):
                targets.setdefault((mid, uid), (ref, sent, deleted))
    return targets


def _bump(session: Session, deltas: dict[str, int]) -> None:
    """Add ``deltas`` to users' unread counters (a missing counter starts at 0).

    In user-id order, so that two transactions that bump the same users (two messages to one
    provider and their staff) lock the counter rows in one order and cannot deadlock on them.
    """
    dialect = session.get_bind().dialect.name
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for uid in sorted(u for u, d in deltas.items() if d):
        stmt = upsert(MailboxUnreadRow).values(user_id=uid, unread=deltas[uid])
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id"], set_={"unread": MailboxUnreadRow.unread + stmt.excluded.unread}
        )
        session.execute(stmt)


def _unread_by_user(session: Session, *where: ColumnElement[bool]) -> dict[str, int]:
    """How many unread, undeleted rows each user has among the rows ``where`` selects."""
    rows = session.execute(
        select(MailboxRow.user_id, func.count())
        .where(*where, MailboxRow.read == false(), MailboxRow.deleted == false())
        .group_by(MailboxRow.user_id)
    ).all()
    return {uid: int(n) for uid, n in rows}


def _delete(session: Session, *where: ColumnElement[bool]) -> None:
    """Delete the rows ``where`` selects, and take their unread ones off the counters."""
    gone = _unread_by_user(session, *where)
    session.execute(delete(MailboxRow).where(*where))
    _bump(session, {uid: -n for uid, n in gone.items()})


def _insert(session: Session, rows: dict[Key, Expected]) -> None:
    """Insert rows, and count their unread ones on the counters."""
    deltas: dict[str, int] = {}
    for (_, uid), e in rows.items():
        if not e.read and not e.deleted:
            deltas[uid] = deltas.get(uid, 0) + 1
    _bump(session, deltas)
    if rows:
        session.execute(
            insert(MailboxRow),
            [
                {
                    "message_id": mid,
                    "user_id": uid,
                    "recipient_ref": e.recipient_ref,
                    "sent": e.sent,
                    "read": e.read,
                    "read_at": e.read_at,
                    "deleted": e.deleted,
                }
                for (mid, uid), e in rows.items()
            ],
        )


def _lock_recipients(session: Session, refs: list[str], *, exclusive: bool) -> None:
    """Order a message write and a recompute of its recipients' users (PostgreSQL; SQLite has one writer).

    A send takes ``FOR KEY SHARE`` on its recipients' resource rows (senders do not block
    each other); a recompute takes ``FOR UPDATE`` on the user's references. Whichever comes
    second waits for the first to commit and then sees its rows, so a staff member assigned
    while a message to the provider is being written gets that message either way. Rows are
    locked in one order (type, id), so two such transactions cannot deadlock on them.
    """
    pairs = sorted({tuple(r.split("/", 1)) for r in refs if "/" in r})
    if not pairs:
        return
    match = or_(*[and_(ResourceRow.res_type == t, ResourceRow.res_id == i) for t, i in pairs])
    stmt = select(ResourceRow.res_type, ResourceRow.res_id).where(match)
    stmt = stmt.order_by(ResourceRow.res_type, ResourceRow.res_id)
    session.execute(stmt.with_for_update() if exclusive else stmt.with_for_update(read=True, key_share=True)).all()


def message_written(session: Session, message_id: str) -> None:
    """Write (or rewrite) one message's rows: the WebMail rules call this in the message's transaction."""
    session.flush()
    recipients = [
        f"{t}/{i}"
        for t, i in session.execute(
            select(IdxReference.target_type, IdxReference.target_id).where(
                IdxReference.res_type == "Communication",
                IdxReference.res_id == message_id,
                (IdxReference.param + "") == "recipient",
            )
        ).all()
    ]
    _lock_recipients(session, recipients, exclusive=False)
    _delete(session, MailboxRow.message_id == message_id)
    _insert(session, expected_rows(session, [message_id]))


def _facts_of_index(index: Any) -> tuple[datetime, list[str]] | None:
    """(sent, recipients) of a just-written message from its own index rows, as :func:`_facts`
    reads them from the tables; None when it is not completed WebMail (it gets no rows)."""
    tokens = index.of("token")
    category = (profile.CATEGORY_SYSTEM, profile.CATEGORY_CODE)
    webmail = any(r["param"] == "category" and (r.get("system"), r.get("code")) == category for r in tokens)
    completed = any(r["param"] == "status" and r.get("code") == "completed" for r in tokens)
    sent = [r["high"] for r in index.of("date") if r["param"] == "sent"]
    if not (webmail and completed and sent):
        return None
    refs = sorted({f"{r['target_type']}/{r['target_id']}" for r in index.of("reference") if r["param"] == "recipient"})
    return max(sent), refs


def message_created(session: Session, message_id: str, index: Any) -> None:
    """The rows of a new message, from what its write indexed: no read-back, no read states yet.

    A message that did not exist before has no mailbox rows and no read-state rows, so
    this is :func:`message_written` without its reads: the recipients' lock, one query
    for their users, one insert.
    """
    facts = _facts_of_index(index)
    if facts is None:
        return
    sent, refs = facts
    _lock_recipients(session, refs, exclusive=False)
    users = ports.mailbox_users().users_for(session, refs) if refs else []
    targets = _targets({message_id: (False, sent, refs)}, users)
    _insert(session, {key: Expected(ref, sent, False, None, False) for key, (ref, _, _) in targets.items()})


def after_communication(ctx: WriteContext) -> None:
    """The WebMail write rule that keeps the mailbox: the message's rows, in its transaction."""
    if ctx.created and ctx.index is not None:
        message_created(ctx.session, ctx.res_id, ctx.index)
    else:
        message_written(ctx.session, ctx.res_id)


def recompute_user(session: Session, user_id: str, recipient_refs: list[str]) -> None:
    """Rebuild one user's rows: the mail addressed to ``recipient_refs`` (their identity or providers).

    Called by the accounts side in the transaction that creates the account or changes its
    staff assignments, so the user's inbox and unread count are exact from that commit on.
    """
    session.flush()
    refs = sorted(set(recipient_refs))
    _lock_recipients(session, refs, exclusive=True)
    _delete(session, MailboxRow.user_id == user_id)
    if not refs:
        return
    ids: set[str] = set()
    for ref in refs:
        ttype, _, tid = ref.partition("/")
        ids.update(
            session.execute(
                select(IdxReference.res_id).where(
                    IdxReference.res_type == "Communication",
                    IdxReference.param == "recipient",
                    IdxReference.target_type == ttype,
                    IdxReference.target_id == tid,
                )
            ).scalars()
        )
    if ids:
        _insert(session, expected_rows(session, sorted(ids), only_user=(user_id, refs)))


def set_read(session: Session, message_id: str, user_id: str, read_at: datetime | None) -> None:
    """The user's row follows their read-state row (same transaction); ``None`` means unread.

    Only a row whose flag changes is updated, and its counter moves by that: of two
    concurrent ``$mark-read`` calls, the second re-checks the flag after the first commits
    (PostgreSQL re-evaluates the WHERE on the locked row) and changes nothing.
    """
    read = read_at is not None
    changed = session.execute(
        update(MailboxRow)
        .where(MailboxRow.message_id == message_id, MailboxRow.user_id == user_id, MailboxRow.read != read)
        .values(read=read, read_at=read_at)
        .returning(MailboxRow.deleted)
    ).all()
    if changed and not changed[0][0]:
        _bump(session, {user_id: -1 if read else 1})
    elif read:
        session.execute(  # already read: only the time of the latest read moves
            update(MailboxRow)
            .where(MailboxRow.message_id == message_id, MailboxRow.user_id == user_id)
            .values(read_at=read_at)
        )


def unread_count(session: Session, user_id: str, grant_conditions: Iterable[ColumnElement[bool]] = ()) -> int:
    """The user's unread, undeleted rows: their counter, or with a granular grant a count of the rows.

    Granular scopes (``grant_conditions`` on ``resource`` rows) join each row to its message
    on ``ix_mailbox_user_unread``, so a message the token cannot read is not counted; without
    them the counter, written with the rows, is the same number in one row's read.
    """
    conds = list(grant_conditions)
    if not conds:
        counter = session.execute(
            select(MailboxUnreadRow.unread).where(MailboxUnreadRow.user_id == user_id)
        ).scalar_one_or_none()
        return int(counter or 0)
    return count_unread_rows(session, user_id, conds)


def count_unread_rows(session: Session, user_id: str, grant_conditions: Iterable[ColumnElement[bool]] = ()) -> int:
    """The user's unread, undeleted rows, counted (the definition the counter must agree with)."""
    conds = list(grant_conditions)
    stmt = select(func.count()).select_from(MailboxRow)
    if conds:
        stmt = stmt.join(
            ResourceRow, and_(ResourceRow.res_type == "Communication", ResourceRow.res_id == MailboxRow.message_id)
        )
    stmt = stmt.where(MailboxRow.user_id == user_id, MailboxRow.read == false(), MailboxRow.deleted == false(), *conds)
    return int(session.execute(stmt).scalar_one())


@dataclass(frozen=True)
class Difference:
    message_id: str
    user_id: str
    problem: str  # "missing" | "unexpected" | "differs" | "count" (the user's unread counter)


CHECK_PAGE = 2000


def next_ids(session: Session, after: str, page: int, derived: Any = MailboxRow.message_id) -> list[str]:
    """The next ``page`` message ids after ``after``, of Communications and ``derived`` rows alike.

    Each source gives its first ``page`` ids; the union's first ``page`` then holds every id
    of either source up to its last one, so no id is skipped between pages. ``derived`` is
    the message-id column of the table being checked (the mailbox's, or the chart's).
    """
    msgs = session.execute(
        select(ResourceRow.res_id)
        .where(ResourceRow.res_type == "Communication", ResourceRow.res_id > after)
        .order_by(ResourceRow.res_id)
        .limit(page)
    ).scalars()
    boxed = session.execute(
        select(derived).where(derived > after).group_by(derived).order_by(derived).limit(page)
    ).scalars()
    return sorted(set(msgs) | set(boxed))[:page]


def check(session: Session, *, fix: bool = False, page: int = CHECK_PAGE) -> list[Difference]:
    """Recompute the table from the resources and list what differs; ``fix`` rewrites those rows.

    Page by page of message ids, so that memory stays bounded by the page at any size of
    the table (a million messages are a few million rows). Then the unread counters against
    the rows (:func:`check_counters`), after any fix of the rows.
    """
    diffs: list[Difference] = []
    after = ""
    while ids := next_ids(session, after, page):
        diffs += _check_page(session, ids, fix=fix)
        after = ids[-1]
    return diffs + check_counters(session, fix=fix)


def check_counters(session: Session, *, fix: bool = False) -> list[Difference]:
    """Each user's unread counter against their unread, undeleted rows; ``fix`` sets the counter.

    A difference names the user (``message_id`` is empty) with the problem ``count``.
    """
    counted = _unread_by_user(session)
    kept = {uid: int(n) for uid, n in session.execute(select(MailboxUnreadRow.user_id, MailboxUnreadRow.unread))}
    wrong = sorted(uid for uid in set(counted) | set(kept) if counted.get(uid, 0) != kept.get(uid, 0))
    if fix:
        _bump(session, {uid: counted.get(uid, 0) - kept.get(uid, 0) for uid in wrong})
    return [Difference("", uid, "count") for uid in wrong]


def _check_page(session: Session, ids: list[str], *, fix: bool) -> list[Difference]:
    want = expected_rows(session, ids)
    have: dict[Key, Expected] = {}
    for chunk in chunks(ids):
        rows = session.execute(  # columns, not ORM objects: nothing piles up in the session
            select(
                MailboxRow.message_id,
                MailboxRow.user_id,
                MailboxRow.recipient_ref,
                MailboxRow.sent,
                MailboxRow.read,
                MailboxRow.read_at,
                MailboxRow.deleted,
            ).where(MailboxRow.message_id.in_(chunk))
        )
        for mid, uid, ref, sent, read, read_at, deleted in rows:
            have[(mid, uid)] = Expected(ref, sent, read, read_at, deleted)
    diffs: list[Difference] = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w is None:
            diffs.append(Difference(*key, "unexpected"))
        elif h is None:
            diffs.append(Difference(*key, "missing"))
        elif not _same(w, h):
            diffs.append(Difference(*key, "differs"))
    if fix and diffs:
        for d in diffs:
            _delete(session, MailboxRow.message_id == d.message_id, MailboxRow.user_id == d.user_id)
        _insert(
            session,
            {(d.message_id, d.user_id): want[(d.message_id, d.user_id)] for d in diffs if d.problem != "unexpected"},
        )
        session.flush()
    return diffs


def _same(a: Expected, b: Expected) -> bool:
    def t(v: datetime | None) -> datetime | None:
        return None if v is None else _naive_utc(v)

    return (a.recipient_ref, t(a.sent), a.read, t(a.read_at), a.deleted) == (
        b.recipient_ref,
        t(b.sent),
        b.read,
        t(b.read_at),
        b.deleted,
    )

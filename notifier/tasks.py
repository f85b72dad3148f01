"""Notification tasks: deliver one outbox row, and sweep up rows whose task got lost.

The outbox row is the source of truth; a task only carries its id. Delivery is at
least once and idempotent: the row is locked while the email is sent (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite runs one writer at a time already), and a row that is no
longer ``pending`` is left alone. So a task enqueued twice, or re-enqueued by the sweep,
sends one email. The one window left is a worker that dies after the SMTP server took
the email and before the row's commit; the stable Message-ID lets mail systems spot that
repeat.

Row states: ``pending`` -> ``sent`` | ``skipped`` (nobody to email; reason in
``last_error``) | ``failed`` (permanent SMTP refusal, or every attempt used up: the
future dead-letter list). ``last_error`` holds an exception class name or a reason
code, never an address or a server's reply text.

The retry schedule lives in the row (``attempts``, ``next_attempt_at``), not only in
the Celery message, so that a chain restarted by the sweep keeps its count and the
sweep can tell an overdue retry from one that is merely waiting.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings
from fhirserver.core.errors import FhirError
from fhirserver.core.principal import system_principal
from fhirserver.db import make_sessionmaker
from fhirserver.models import OutboxRow
from notifier import smtp
from notifier.app_settings import PURGE_TASK, SEAL_AUDIT_TASK, SEND_TASK, SWEEP_TASK, settings_of
from notifier.email import ALERT_RECIPIENT, PORTAL_PATHS, alert_address, build_notification, email_of, message_id_for

log = logging.getLogger(__name__)

MAX_RETRIES = 8
MAX_ATTEMPTS = MAX_RETRIES + 1
RETRY_BACKOFF_MAX = 600  # seconds; also well under Redis' visibility timeout (1 h)
SWEEP_AFTER_SECONDS = 20
SWEEP_BATCH = 500
TRANSIENT = (smtplib.SMTPException, OSError)

_makers: dict[str, sessionmaker[Session]] = {}
_makers_lock = threading.Lock()


def session_maker(settings: Settings) -> sessionmaker[Session]:
    """One engine and sessionmaker per process and database (shared by a threads pool)."""
    with _makers_lock:
        maker = _makers.get(settings.database_url)
        if maker is None:
            maker = _makers[settings.database_url] = make_sessionmaker(settings.database_url)
        return maker


@worker_process_init.connect
def _forget_parent_engines(**_: Any) -> None:
    """A forked pool child must not share the parent's database connections."""
    for maker in _makers.values():
        maker.kw["bind"].dispose(close=False)
    _makers.clear()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt did; ``retry_in`` (seconds) is set when another attempt is due."""

    status: str
    retry_in: int | None = None
    error: str | None = None


class DeliveryError(Exception):
    """Stands in for the real error in Celery's retry and failure logs: class name only.

    smtplib's exceptions carry recipient addresses and server replies, which must not
    reach the worker's log.
    """


def backoff_seconds(settings: Settings, attempts: int) -> int:
    """Celery's exponential backoff with full jitter, from the attempts recorded on the row."""
    return get_exponential_backoff_interval(
        factor=settings.notify_retry_backoff,
        retries=max(0, attempts - 1),
        maximum=RETRY_BACKOFF_MAX,
        full_jitter=True,
    )


def _note_failure(row: OutboxRow, settings: Settings, exc: BaseException, permanent: bool) -> Outcome:
    row.attempts += 1
    row.last_error = type(exc).__name__
    if permanent or row.attempts >= MAX_ATTEMPTS:
        row.status = "failed"
        row.next_attempt_at = None
        log.warning("notification outbox=%s failed after %d attempt(s): %s", row.id, row.attempts, row.last_error)
        return Outcome("failed", error=row.last_error)
    countdown = backoff_seconds(settings, row.attempts)
    row.next_attempt_at = _now() + timedelta(seconds=countdown)
    log.info(
        "notification outbox=%s attempt %d failed (%s); retry in %ss", row.id, row.attempts, row.last_error, countdown
    )
    return Outcome("pending", retry_in=countdown, error=row.last_error)


def _skip(row: OutboxRow, reason: str) -> Outcome:
    row.status = "skipped"
    row.last_error = reason
    row.next_attempt_at = None
    log.info("notification outbox=%s skipped: %s", row.id, reason)
    return Outcome("skipped", error=reason)


def _recipient_email(session: Session, settings: Settings, recipient_ref: str) -> tuple[str | None, str]:
    """(address, reason): the recipient's email read through the repository, or why there is none."""
    from fhirserver.core.repository import Repository

    res_type, _, res_id = recipient_ref.partition("/")
    if res_type not in PORTAL_PATHS or not res_id:
        return None, "unsupported-recipient"
    if res_type == ALERT_RECIPIENT:  # an administrator's address from SECURITY_ALERT_EMAILS
        address = alert_address(settings, recipient_ref)
        return address, "" if address else "recipient-not-found"
    try:
        resource = Repository(session, settings, system_principal("notifier")).read(res_type, res_id).json()
    except FhirError as exc:
        if exc.status in (404, 410):
            return None, "recipient-not-found"
        raise
    address = email_of(resource)
    return address, "" if address else "no-email"


def deliver(settings: Settings, maker: sessionmaker[Session], outbox_id: int) -> Outcome:
    """Send the email of one outbox row unless that already happened; one transaction, row locked."""
    with maker() as session, session.begin():
        row = session.execute(select(OutboxRow).where(OutboxRow.id == outbox_id).with_for_update()).scalar_one_or_none()
        if row is None:
            return Outcome("missing")
        if row.status != "pending":
            return Outcome(row.status)
        address, reason = _recipient_email(session, settings, row.recipient_ref)
        if address is None:
            return _skip(row, reason)
        message_id = row.message_id or message_id_for(
            row.subject_id, row.recipient_ref, settings.mail_from, secret=settings.secret_key, kind=row.kind
        )
        msg = build_notification(settings, address, message_id, row.recipient_ref.partition("/")[0], row.kind)
        try:
            smtp.send(settings.smtp_url, msg, settings.mail_from, address)
        except TRANSIENT as exc:
            return _note_failure(row, settings, exc, smtp.is_permanent(exc))
        row.status = "sent"
        row.sent_at = _now()
        row.attempts += 1
        row.last_error = None
        row.next_attempt_at = None
        log.info("notification outbox=%s sent", row.id)
        return Outcome("sent")


def record_failure(settings: Settings, maker: sessionmaker[Session], outbox_id: int, exc: BaseException) -> Outcome:
    """Count an attempt that failed outside SMTP (a bug, a bad resource) in a transaction of its own."""
    with maker() as session, session.begin():
        row = session.execute(select(OutboxRow).where(OutboxRow.id == outbox_id).with_for_update()).scalar_one_or_none()
        if row is None or row.status != "pending":
            return Outcome(row.status if row else "missing")
        return _note_failure(row, settings, exc, permanent=False)


def due_rows(
    settings: Settings,
    maker: sessionmaker[Session],
    now: datetime | None = None,
    older_than: int = SWEEP_AFTER_SECONDS,
    limit: int = SWEEP_BATCH,
) -> list[int]:
    """Claim pending rows whose first attempt or retry is overdue by ``older_than`` seconds.

    Claimed rows get ``next_attempt_at = now``, so the next sweep leaves them alone for
    another ``older_than`` seconds. Rows locked by a worker that is sending are skipped.
    """
    now = now or _now()
    cutoff = now - timedelta(seconds=older_than)
    due_at = func.coalesce(OutboxRow.next_attempt_at, OutboxRow.created_at)
    with maker() as session, session.begin():
        rows = (
            session.execute(
                select(OutboxRow)
                .where(OutboxRow.status == "pending", due_at < cutoff)
                .order_by(OutboxRow.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        for row in rows:
            row.next_attempt_at = now
        return [row.id for row in rows]


@shared_task(
    bind=True,
    name=SEND_TASK,
    acks_late=True,
    max_retries=MAX_RETRIES,
    retry_backoff=True,
    retry_jitter=True,
    retry_backoff_max=RETRY_BACKOFF_MAX,
)
def send_notification(self: Any, outbox_id: int) -> str:
    """Deliver outbox row ``outbox_id``; retried with exponential backoff while the failure is transient."""
    settings = settings_of(self.app)
    maker = session_maker(settings)
    try:
        outcome = deliver(settings, maker, int(outbox_id))
    except Exception as exc:
        # Class name only: database errors quote their parameters, which may be PHI.
        log.error("notification outbox=%s: unexpected %s", outbox_id, type(exc).__name__)
        outcome = record_failure(settings, maker, int(outbox_id), exc)
    if outcome.retry_in is not None:
        raise self.retry(exc=DeliveryError(outcome.error), countdown=outcome.retry_in)
    return outcome.status


@shared_task(bind=True, name=SWEEP_TASK, ignore_result=True)
def sweep_outbox(self: Any) -> int:
    """Re-enqueue pending rows whose task was lost (enqueue after commit failed, broker lost it)."""
    settings = settings_of(self.app)
    ids = due_rows(settings, session_maker(settings))
    if ids:
        task = self.app.tasks[SEND_TASK]
        with self.app.producer_or_acquire() as producer:
            for outbox_id in ids:
                task.apply_async(args=[outbox_id], producer=producer)
        log.info("outbox sweep re-enqueued %d notification(s)", len(ids))
    return len(ids)


@shared_task(bind=True, name=PURGE_TASK, ignore_result=True)
def purge_expired(self: Any) -> dict[str, int]:
    """Delete what the login server no longer needs: ended sessions, expired codes and refresh
    tokens, grants no token can use, stale throttle rows (``smart_auth.housekeeping``)."""
    from fhirserver.break_glass import purge as purge_break_glass
    from smart_auth.housekeeping import purge

    settings = settings_of(self.app)
    with session_maker(settings)() as session, session.begin():
        counts = purge(session, settings)
        counts.update(purge_break_glass(session))
    if any(counts.values()):
        log.info("auth purge: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return counts


@shared_task(bind=True, name=SEAL_AUDIT_TASK, ignore_result=True)
def seal_audit_log(self: Any) -> int:
    """Link every committed, unsealed audit record into the hash chain (fhirserver.core.audit_chain)."""
    from fhirserver.core import audit_chain

    settings = settings_of(self.app)
    maker = session_maker(settings)
    engine = maker.kw["bind"]
    count = audit_chain.seal_all(engine, audit_chain.chain_key(settings.secret_key))
    if count:
        # The head, logged outside the database: an anchor against truncating the chain's end.
        with engine.connect() as conn:
            seq, digest = audit_chain.head(conn)
        # SEQ:HASH is what `fhirserver audit verify --anchor` takes.
        log.info("audit chain: sealed %d record(s); head %d:%s", count, seq, digest)
    return count

"""The transactional outbox: a notification row written in the same transaction as its cause.

Two kinds of notice go out: ``webmail-notify`` (a provider wrote to a patient) and
``password-reset`` (the office issued a new one-time password for the patient's portal
account). Both say only that something happened and where to sign in: no PHI.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.hooks import WriteContext
from fhirserver.models import OutboxRow
from fhirserver.webmail import profile
from fhirserver.webmail.profile import refs
from notifier.email import message_id_for

OUTBOX_KEY = "outbox_new"  # session.info: ids enqueued after the commit (notifier.dispatch)


def queue_notice(session: Session, settings: Settings, *, kind: str, subject_id: str, recipient_ref: str) -> int:
    """Insert one outbox row in the caller's transaction; its id is enqueued after the commit."""
    row = OutboxRow(
        kind=kind,
        subject_id=subject_id,
        recipient_ref=recipient_ref,
        status="pending",
        attempts=0,
        created_at=datetime.now(UTC),
        # Stable per (kind, subject, recipient): every retry sends the same Message-ID.
        message_id=message_id_for(subject_id, recipient_ref, settings.mail_from, secret=settings.secret_key, kind=kind),
    )
    session.add(row)
    session.flush()
    session.info.setdefault(OUTBOX_KEY, []).append(row.id)
    return row.id


def after_communication(ctx: WriteContext) -> None:
    """Queue one email per patient recipient when a provider writes to a patient."""
    sender = refs(ctx.data, "sender")
    if not sender or not sender[0].startswith("Practitioner/"):
        return
    for ref in dict.fromkeys(refs(ctx.data, "recipient")):
        if ref.startswith("Patient/"):
            queue_notice(ctx.session, ctx.settings, kind=profile.NOTIFY_KIND, subject_id=ctx.res_id, recipient_ref=ref)

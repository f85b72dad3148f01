"""The transactional outbox: a notification row written in the message's own transaction."""

from __future__ import annotations

from datetime import UTC, datetime

from fhirserver.core.repository import WriteContext
from fhirserver.models import OutboxRow
from fhirserver.webmail import profile
from fhirserver.webmail.profile import refs
from notifier.email import message_id_for


def after_communication(ctx: WriteContext) -> None:
    """Queue one email per patient recipient when a provider writes to a patient."""
    sender = refs(ctx.data, "sender")
    if not sender or not sender[0].startswith("Practitioner/"):
        return
    new_ids = ctx.session.info.setdefault("outbox_new", [])
    for ref in dict.fromkeys(refs(ctx.data, "recipient")):
        if not ref.startswith("Patient/"):
            continue
        row = OutboxRow(
            kind=profile.NOTIFY_KIND,
            communication_id=ctx.res_id,
            recipient_ref=ref,
            status="pending",
            attempts=0,
            created_at=datetime.now(UTC),
            # Stable per (message, recipient): every retry sends the same Message-ID.
            message_id=message_id_for(ctx.res_id, ref, ctx.settings.mail_from, secret=ctx.settings.secret_key),
        )
        ctx.session.add(row)
        ctx.session.flush()
        new_ids.append(row.id)

"""deliver() and the sweep query against the real database (both backends) and a real SMTP server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings
from notifier.tasks import MAX_ATTEMPTS, deliver, due_rows
from tests.notifier.notifier_support import add_outbox, assert_no_phi, create_patient, outbox_row, sentinel_patient
from tests.support import MailCatcher, uid


def _row(maker: sessionmaker[Session], settings: Settings, patient_id: str, **kw: object) -> int:
    with maker() as session, session.begin():
        return add_outbox(session, settings, patient_id, **kw).id  # type: ignore[arg-type]


def test_sends_once_with_link_and_no_phi(
    nsettings: Settings, maker: sessionmaker[Session], mailbox: MailCatcher
) -> None:
    pid, address, family = sentinel_patient(maker, nsettings)
    comm_id = f"zzphisentinel-comm-{uid()}"
    oid = _row(maker, nsettings, pid, comm_id=comm_id)

    assert deliver(nsettings, maker, oid).status == "sent"
    assert deliver(nsettings, maker, oid).status == "sent"  # already sent: nothing happens

    [mail] = mailbox.to(address)
    row = outbox_row(maker, oid)
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
    assert row.sent_at is not None
    msg = mail.message
    assert msg["Message-ID"] == row.message_id
    assert msg["To"] == address
    assert f"{nsettings.base_url}/portal/" in msg.get_body().get_content()  # type: ignore[union-attr]
    assert_no_phi(mail, "ZZPHISENTINEL", family, comm_id, pid)
    # The address goes in To and nowhere else.
    assert mail.raw.decode().count(address) == 1


def test_missing_message_id_is_computed(
    nsettings: Settings, maker: sessionmaker[Session], mailbox: MailCatcher
) -> None:
    address = f"pt.{uid()}@mail.example"
    pid = create_patient(maker, nsettings, address=address)
    oid = _row(maker, nsettings, pid, message_id="")
    assert deliver(nsettings, maker, oid).status == "sent"
    [mail] = mailbox.to(address)
    assert mail.message["Message-ID"].startswith("<webmail-notify.")
    assert mail.message["Message-ID"].endswith("@practice.example>")


def test_no_email_is_skipped(nsettings: Settings, maker: sessionmaker[Session], mailbox: MailCatcher) -> None:
    pid = create_patient(maker, nsettings, address=None)
    oid = _row(maker, nsettings, pid)
    assert deliver(nsettings, maker, oid).status == "skipped"
    row = outbox_row(maker, oid)
    assert (row.status, row.last_error, row.attempts) == ("skipped", "no-email", 0)
    assert mailbox.messages == []


def test_unknown_recipient_is_skipped(nsettings: Settings, maker: sessionmaker[Session]) -> None:
    oid = _row(maker, nsettings, f"nobody-{uid()}")
    assert deliver(nsettings, maker, oid).status == "skipped"
    assert outbox_row(maker, oid).last_error == "recipient-not-found"


def test_smtp_down_counts_attempts_then_fails(settings: Settings, maker: sessionmaker[Session]) -> None:
    down = MailCatcher()  # never started: connections are refused
    cfg = settings.with_(smtp_url=down.url, notify_retry_backoff=1)
    pid = create_patient(maker, cfg, address=f"pt.{uid()}@mail.example")
    oid = _row(maker, cfg, pid)

    before = datetime.now(UTC)
    outcome = deliver(cfg, maker, oid)
    assert outcome.status == "pending" and outcome.retry_in is not None and outcome.retry_in <= 1
    row = outbox_row(maker, oid)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "ConnectionRefusedError")
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.replace(tzinfo=UTC) >= before.replace(microsecond=0)

    for _ in range(MAX_ATTEMPTS - 1):
        outcome = deliver(cfg, maker, oid)
    assert outcome.status == "failed" and outcome.retry_in is None
    row = outbox_row(maker, oid)
    assert (row.status, row.attempts) == ("failed", MAX_ATTEMPTS)
    assert deliver(cfg, maker, oid).status == "failed"
    assert outbox_row(maker, oid).attempts == MAX_ATTEMPTS


def test_permanent_refusal_fails_at_once(
    nsettings: Settings, maker: sessionmaker[Session], mailbox: MailCatcher
) -> None:
    mailbox.refuse = True
    address = f"pt.{uid()}@mail.example"
    pid = create_patient(maker, nsettings, address=address)
    oid = _row(maker, nsettings, pid)
    assert deliver(nsettings, maker, oid).status == "failed"
    row = outbox_row(maker, oid)
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "SMTPRecipientsRefused")
    assert address not in (row.last_error or "")


def test_concurrent_deliveries_send_one_email(
    nsettings: Settings, maker: sessionmaker[Session], mailbox: MailCatcher
) -> None:
    mailbox.delay = 0.5  # the first sender holds the row while the others arrive
    address = f"pt.{uid()}@mail.example"
    pid = create_patient(maker, nsettings, address=address)
    oid = _row(maker, nsettings, pid)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(deliver(nsettings, maker, oid).status)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["sent", "sent", "sent"]
    assert len(mailbox.to(address)) == 1
    assert outbox_row(maker, oid).attempts == 1


def test_due_rows_picks_overdue_pending_rows_once(nsettings: Settings, maker: sessionmaker[Session]) -> None:
    pid = create_patient(maker, nsettings, address=f"pt.{uid()}@mail.example")
    now = datetime.now(UTC)
    old = _row(maker, nsettings, pid, created_at=now - timedelta(seconds=60))
    fresh = _row(maker, nsettings, pid, created_at=now - timedelta(seconds=5))
    waiting = _row(maker, nsettings, pid, created_at=now - timedelta(seconds=600))
    done = _row(maker, nsettings, pid, created_at=now - timedelta(seconds=600))
    with maker() as session, session.begin():
        from fhirserver.models import OutboxRow

        session.get(OutboxRow, waiting).next_attempt_at = now + timedelta(seconds=30)  # type: ignore[union-attr]
        session.get(OutboxRow, done).status = "sent"  # type: ignore[union-attr]

    picked = due_rows(nsettings, maker, now=now, limit=10_000)
    assert old in picked
    assert not {fresh, waiting, done} & set(picked)
    # Claimed: the next sweep leaves it alone for another grace period, then takes it again.
    assert old not in due_rows(nsettings, maker, now=now + timedelta(seconds=5), limit=10_000)
    assert old in due_rows(nsettings, maker, now=now + timedelta(seconds=25), limit=10_000)


def test_a_password_reset_notice_goes_out_with_its_own_text_and_no_phi(
    nsettings: Settings, maker: sessionmaker[Session], mailbox: MailCatcher
) -> None:
    """Defect 1: the patient learns of a reset by email; nothing about them or the password in it."""
    from fhirserver.webmail.outbox import queue_notice

    pid, address, family = sentinel_patient(maker, nsettings)
    event = f"zzphisentinel-audit-{uid()}"
    with maker() as session, session.begin():
        oid = queue_notice(session, nsettings, kind="password-reset", subject_id=event, recipient_ref=f"Patient/{pid}")
        session.info.pop("outbox_new")
    assert deliver(nsettings, maker, oid).status == "sent"
    [mail] = mailbox.to(address)
    body = mail.message.get_body().get_content()  # type: ignore[union-attr]
    assert mail.message["Subject"] == "Your patient portal password was reset"
    assert "reset the password" in body and f"{nsettings.base_url}/portal/" in body
    assert_no_phi(mail, "ZZPHISENTINEL", family, event, pid)
    assert outbox_row(maker, oid).message_id == mail.message["Message-ID"]
    assert mail.message["Message-ID"].startswith("<password-reset.")

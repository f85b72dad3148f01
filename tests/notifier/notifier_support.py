"""Real parts for the notifier tests: an in-memory SMTP server, patients and outbox rows.

Plain helpers (the fixtures are in this folder's conftest.py). Test data goes through the
repository, as in production; outbox rows are inserted the way the WebMail writer does.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings
from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.models import OutboxRow
from notifier.email import NOTIFY_KIND, message_id_for

SENTINEL = "ZZPHISENTINEL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def uid() -> str:
    return uuid.uuid4().hex[:10]


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class MailCatcher:
    """A real SMTP server (aiosmtpd) on a fixed port that keeps messages in memory.

    ``stop()`` and ``start()`` take it down and up on the same port, to play an outage;
    ``delay`` slows DATA down so that concurrent senders overlap; ``refuse`` answers 550.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[Captured] = []
        self.delay = 0.0
        self.refuse = False
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.messages.append(Captured(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content))
        return "250 Message accepted"

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                          server_hostname="localhost")
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Captured]:
        with self._lock:
            return [m for m in self.messages if address in m.rcpt_tos]

    def wait_for(self, address: str, count: int = 1, timeout: float = 30.0) -> list[Captured]:
        return wait_until(lambda: len(self.to(address)) >= count and self.to(address), timeout,
                          f"{count} email(s)")


def create_patient(maker: sessionmaker[Session], settings: Settings, *, address: str | None,
                   family: str = "Rivera", given: str = "Lena") -> str:
    """A Patient written through the repository; returns its id."""
    telecom: list[dict[str, Any]] = [{"system": "phone", "value": "555-0100"}]
    if address:
        telecom.append({"system": "email", "value": address})
    body = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
            "birthDate": "1980-04-02", "telecom": telecom}
    with maker() as session, session.begin():
        return Repository(session, settings, system_principal("tests")).create("Patient", body).res_id


def sentinel_patient(maker: sessionmaker[Session], settings: Settings) -> tuple[str, str, str]:
    """A patient whose names carry the PHI sentinel: (id, email address, family name).

    The address itself must appear in the To header (that is where the email goes), so it
    carries its own unique marker instead, checked to appear nowhere else.
    """
    tag = uid()
    family = f"{SENTINEL}Family{tag}"
    address = f"pt.{tag}@mail.example"
    patient_id = create_patient(maker, settings, address=address, family=family, given=f"{SENTINEL}Given")
    return patient_id, address, family


def add_outbox(session: Session, settings: Settings, patient_id: str, *, comm_id: str | None = None,
               created_at: datetime | None = None, message_id: str | None = None) -> OutboxRow:
    """Insert a pending outbox row as the WebMail writer does (flushed, id listed in session.info)."""
    comm_id = comm_id or f"{SENTINEL.lower()}-comm-{uid()}"
    ref = f"Patient/{patient_id}"
    row = OutboxRow(kind=NOTIFY_KIND, communication_id=comm_id, recipient_ref=ref, status="pending",
                    attempts=0, created_at=created_at or datetime.now(UTC),
                    message_id=message_id_for(comm_id, ref, settings.mail_from, secret=settings.secret_key)
                    if message_id is None else message_id)
    session.add(row)
    session.flush()
    session.info.setdefault("outbox_new", []).append(row.id)
    return row


def outbox_row(maker: sessionmaker[Session], outbox_id: int) -> OutboxRow:
    with maker() as session:
        row = session.get(OutboxRow, outbox_id)
        assert row is not None
        return row


def assert_no_phi(captured: Captured, *secrets: str) -> None:
    """None of ``secrets`` in the raw email, nor in any decoded header or body part."""
    msg = captured.message
    decoded = [str(v) for _, v in msg.items()]
    decoded += [part.get_content() for part in msg.walk() if part.get_content_maintype() == "text"]
    haystacks = [captured.raw.decode("utf-8", "replace").lower(), "\n".join(decoded).lower()]
    for secret in secrets:
        for hay in haystacks:
            assert secret.lower() not in hay, "PHI leaked into the notification email"

"""Real parts for the notifier tests: own databases, patients, outbox rows, PHI checks.

Plain helpers (the fixtures are in this folder's conftest.py; the SMTP server and the
helpers every folder shares are in tests/support.py). Test data goes through the
repository, as in production; outbox rows are inserted the way the WebMail writer does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings
from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.models import OutboxRow
from notifier.email import NOTIFY_KIND, message_id_for
from tests.support import Captured, fresh_database, uid

SENTINEL = "ZZPHISENTINEL"


@contextmanager
def worker_database(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of our own (see tests.support.fresh_database) whose connection pool in the
    notifier's per-URL session makers is closed before it is dropped."""
    with fresh_database(backend, tmp_path_factory) as url:
        try:
            yield url
        finally:
            from notifier import tasks

            maker = tasks._makers.pop(url, None)
            if maker is not None:
                maker.kw["bind"].dispose()


def create_patient(
    maker: sessionmaker[Session],
    settings: Settings,
    *,
    address: str | None,
    family: str = "Rivera",
    given: str = "Lena",
) -> str:
    """A Patient written through the repository; returns its id."""
    telecom: list[dict[str, Any]] = [{"system": "phone", "value": "555-0100"}]
    if address:
        telecom.append({"system": "email", "value": address})
    body = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "birthDate": "1980-04-02",
        "telecom": telecom,
    }
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


def add_outbox(
    session: Session,
    settings: Settings,
    patient_id: str,
    *,
    comm_id: str | None = None,
    created_at: datetime | None = None,
    message_id: str | None = None,
) -> OutboxRow:
    """Insert a pending outbox row as the WebMail writer does (flushed, id listed in session.info)."""
    comm_id = comm_id or f"{SENTINEL.lower()}-comm-{uid()}"
    ref = f"Patient/{patient_id}"
    row = OutboxRow(
        kind=NOTIFY_KIND,
        subject_id=comm_id,
        recipient_ref=ref,
        status="pending",
        attempts=0,
        created_at=created_at or datetime.now(UTC),
        message_id=message_id_for(comm_id, ref, settings.mail_from, secret=settings.secret_key)
        if message_id is None
        else message_id,
    )
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

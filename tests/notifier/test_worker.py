"""A real Celery worker process on Redis, a real SMTP server, a PostgreSQL database of our own.

The worker runs ``celery -A notifier.celery_app worker`` with the same environment a
deployment would give it; this process enqueues through its own app, as the web app does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings, load_settings
from notifier import dispatch
from notifier.celery_app import SEND_TASK, SWEEP_TASK, make_celery
from notifier.email import message_id_for
from notifier.tasks import session_maker
from tests.notifier.notifier_support import (
    SENTINEL,
    add_outbox,
    assert_no_phi,
    create_patient,
    outbox_row,
    sentinel_patient,
    worker_database,
)
from tests.support import BACKENDS, MailCatcher, celery_worker, free_port, test_env, uid, wait_until

pytestmark = pytest.mark.celery


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if "postgresql" not in BACKENDS:
        pytest.skip("the worker tests run on PostgreSQL only")
    with worker_database("postgresql", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[MailCatcher]:
    with MailCatcher() as catcher:
        yield catcher


@pytest.fixture(scope="module")
def worker_env(
    pg_url: str, redis_url: str, smtp_server: MailCatcher, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    env: dict[str, str] = test_env(
        tmp_path_factory.mktemp("worker"),
        pg_url,
        free_port(),
        BROKER_URL=redis_url,
        SMTP_URL=smtp_server.url,
        NOTIFY_DISPATCH="celery",
        NOTIFY_RETRY_BACKOFF="1",
    )
    return env


@pytest.fixture(scope="module")
def cfg(worker_env: dict[str, str]) -> Settings:
    return load_settings(worker_env)


@pytest.fixture(scope="module")
def worker(worker_env: dict[str, str], artifacts: Path) -> Iterator[Path]:
    """The worker process; yields its log file (kept in tests/artifacts/ for failed runs)."""
    with celery_worker(worker_env, artifacts / "notifier-worker.log") as log:
        yield log


@pytest.fixture()
def mailbox(smtp_server: MailCatcher, worker: Path) -> Iterator[MailCatcher]:
    smtp_server.start()
    yield smtp_server
    smtp_server.start()  # a test that stopped it leaves it running for the next one


@pytest.fixture(scope="module")
def client_app(cfg: Settings):  # type: ignore[no-untyped-def]
    return make_celery(cfg)


@pytest.fixture()
def maker(cfg: Settings) -> sessionmaker[Session]:
    return session_maker(cfg)


def _row(maker: sessionmaker[Session], cfg: Settings, patient_id: str, **kw: object) -> int:
    with maker() as session, session.begin():
        row = add_outbox(session, cfg, patient_id, **kw)  # type: ignore[arg-type]
        session.info.pop("outbox_new")  # this process enqueues by hand, no dispatch
        return row.id


def _patient(maker: sessionmaker[Session], cfg: Settings, email: bool = True) -> tuple[str, str]:
    address = f"pt.{uid()}@mail.example"
    return create_patient(maker, cfg, address=address if email else None), address


def _status(maker: sessionmaker[Session], oid: int, *states: str) -> bool:
    return outbox_row(maker, oid).status in states


def test_enqueued_twice_sends_one_email(
    cfg: Settings,
    maker: sessionmaker[Session],
    client_app,  # type: ignore[no-untyped-def]
    mailbox: MailCatcher,
) -> None:
    pid, address = _patient(maker, cfg)
    oid = _row(maker, cfg, pid)
    task = client_app.tasks[SEND_TASK]
    task.delay(oid)
    task.delay(oid)
    # One worker takes tasks in order: once a later marker email is out, both copies have run.
    marker_pid, marker_address = _patient(maker, cfg)
    task.delay(_row(maker, cfg, marker_pid))
    mailbox.wait_for(marker_address)
    assert len(mailbox.to(address)) == 1
    row = outbox_row(maker, oid)
    assert (row.status, row.attempts) == ("sent", 1)


def test_retry_after_smtp_refused(
    cfg: Settings,
    maker: sessionmaker[Session],
    client_app,  # type: ignore[no-untyped-def]
    mailbox: MailCatcher,
) -> None:
    mailbox.stop()
    pid, address = _patient(maker, cfg)
    oid = _row(maker, cfg, pid)
    client_app.tasks[SEND_TASK].delay(oid)
    wait_until(lambda: outbox_row(maker, oid).attempts >= 1, 30, "a failed attempt")
    failed = outbox_row(maker, oid)
    assert (failed.status, failed.last_error) == ("pending", "ConnectionRefusedError")
    mailbox.start()
    mailbox.wait_for(address, timeout=60)
    wait_until(lambda: _status(maker, oid, "sent"), 30, "the row marked sent")
    row = outbox_row(maker, oid)
    assert row.attempts >= 2 and row.last_error is None
    assert len(mailbox.to(address)) == 1


def test_email_has_link_no_phi_and_stable_message_id(
    cfg: Settings, maker: sessionmaker[Session], client_app, mailbox: MailCatcher
) -> None:  # type: ignore[no-untyped-def]
    pid, address, family = sentinel_patient(maker, cfg)
    comm_id = f"{SENTINEL.lower()}-comm-{uid()}"
    oid = _row(maker, cfg, pid, comm_id=comm_id)
    client_app.tasks[SEND_TASK].delay(oid)
    [mail] = mailbox.wait_for(address)
    msg = mail.message
    assert f"{cfg.base_url}/portal/" in msg.get_body().get_content()  # type: ignore[union-attr]
    assert_no_phi(mail, SENTINEL, family, comm_id, pid)
    expected = message_id_for(comm_id, f"Patient/{pid}", cfg.mail_from, secret=cfg.secret_key)
    assert msg["Message-ID"] == expected == outbox_row(maker, oid).message_id


def test_sweep_reenqueues_a_lost_row(
    cfg: Settings,
    maker: sessionmaker[Session],
    client_app,  # type: ignore[no-untyped-def]
    mailbox: MailCatcher,
) -> None:
    pid, address = _patient(maker, cfg)
    oid = _row(maker, cfg, pid, created_at=datetime.now(UTC) - timedelta(seconds=90))  # never enqueued
    client_app.tasks[SWEEP_TASK].delay()
    mailbox.wait_for(address)
    wait_until(lambda: _status(maker, oid, "sent"), 30, "the row marked sent")


def test_patient_without_email_is_skipped(
    cfg: Settings,
    maker: sessionmaker[Session],
    client_app,  # type: ignore[no-untyped-def]
    mailbox: MailCatcher,
) -> None:
    pid, _ = _patient(maker, cfg, email=False)
    oid = _row(maker, cfg, pid)
    client_app.tasks[SEND_TASK].delay(oid)
    wait_until(lambda: _status(maker, oid, "skipped", "sent", "failed"), 30, "the row settled")
    row = outbox_row(maker, oid)
    assert (row.status, row.last_error, row.attempts) == ("skipped", "no-email", 0)


def test_commit_dispatches_to_the_worker(cfg: Settings, maker: sessionmaker[Session], mailbox: MailCatcher) -> None:
    """The production path: rows committed with their ids in session.info reach the worker."""
    dispatch.install(cfg)
    try:
        pid, address = _patient(maker, cfg)
        with maker() as session:
            oid = add_outbox(session, cfg, pid).id
            session.commit()
        mailbox.wait_for(address)
        wait_until(lambda: _status(maker, oid, "sent"), 30, "the row marked sent")
    finally:
        dispatch.install(cfg.with_(notify_dispatch="none"))


def test_worker_log_has_no_phi(
    cfg: Settings,
    maker: sessionmaker[Session],
    client_app,  # type: ignore[no-untyped-def]
    mailbox: MailCatcher,
    worker: Path,
) -> None:
    """A send that fails, is retried and succeeds leaves no address, name or id in the worker's log."""
    pid, address, family = sentinel_patient(maker, cfg)
    comm_id = f"{SENTINEL.lower()}-comm-{uid()}"
    mailbox.stop()
    oid = _row(maker, cfg, pid, comm_id=comm_id)
    client_app.tasks[SEND_TASK].delay(oid)
    wait_until(lambda: outbox_row(maker, oid).attempts >= 1, 30, "a failed attempt")
    mailbox.start()
    mailbox.wait_for(address, timeout=60)
    wait_until(lambda: _status(maker, oid, "sent"), 30, "the row marked sent")
    text = worker.read_text()
    assert f"outbox={oid} sent" in text  # the log is the worker's, and it is written
    for secret in (SENTINEL, address, family, comm_id, pid):
        assert secret.lower() not in text.lower(), "PHI in the worker log"


def test_webmail_to_patient_end_to_end(cfg: Settings, maker: sessionmaker[Session], mailbox: MailCatcher) -> None:
    """A provider's message written through the repository: the WebMail writer's outbox row is
    dispatched on commit, the worker emails the patient once, and nothing of the message leaks."""
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository
    from smart_auth.accounts import create_user

    tag = uid()
    address = f"pt.{tag}@mail.example"
    topic, body = f"{SENTINEL} topic {tag}", f"{SENTINEL} body: your results {tag}"
    dispatch.install(cfg)
    try:
        with maker() as session:
            repo = Repository(session, cfg, system_principal("tests"))
            prac = repo.create(
                "Practitioner", {"resourceType": "Practitioner", "name": [{"family": f"Doc{tag}"}]}
            ).res_id
            pid = repo.create(
                "Patient",
                {
                    "resourceType": "Patient",
                    "name": [{"family": f"{SENTINEL}Fam{tag}", "given": ["Lena"]}],
                    "birthDate": "1980-04-02",
                    "telecom": [{"system": "email", "value": address}],
                    "generalPractitioner": [{"reference": f"Practitioner/{prac}"}],
                },
            ).res_id
            create_user(
                session,
                username=f"pat{tag}",
                password="correct horse battery staple",
                role="patient",
                settings=cfg,
                fhir_user=f"Patient/{pid}",
            )
            session.commit()
            comm = repo.create(
                "Communication",
                {
                    "resourceType": "Communication",
                    "status": "completed",
                    "sender": {"reference": f"Practitioner/{prac}"},
                    "recipient": [{"reference": f"Patient/{pid}"}],
                    "topic": {"text": topic},
                    "payload": [{"contentString": body}],
                },
            ).res_id
            session.commit()
        [mail] = mailbox.wait_for(address)
        assert_no_phi(mail, SENTINEL, topic, body, comm, pid, f"Doc{tag}", f"pat{tag}")
        assert f"{cfg.base_url}/portal/" in mail.message.get_body().get_content()  # type: ignore[union-attr]
        with maker() as session:
            from sqlalchemy import select

            from fhirserver.models import OutboxRow

            [row] = session.execute(select(OutboxRow).where(OutboxRow.subject_id == comm)).scalars()
        wait_until(lambda: _status(maker, row.id, "sent"), 30, "the row marked sent")
        assert mail.message["Message-ID"] == row.message_id
    finally:
        dispatch.install(cfg.with_(notify_dispatch="none"))

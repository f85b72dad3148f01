"""After-commit dispatch: committed outbox rows are enqueued once; rolled back ones never.

Runs Celery eagerly (the task runs in this process on commit) against a database of this
module's own, because ``install`` registers process-wide listeners for a database URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings, load_settings
from notifier import dispatch
from notifier.tasks import session_maker
from tests.notifier.notifier_support import add_outbox, create_patient, outbox_row
from tests.support import MailCatcher, free_port, test_env, uid


@pytest.fixture(scope="module")
def base_settings(own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    env = test_env(tmp_path_factory.mktemp("dispatch"), own_database, free_port())
    return load_settings(env)


@pytest.fixture()
def eager(base_settings: Settings, mailbox: MailCatcher) -> Iterator[Settings]:
    cfg = base_settings.with_(smtp_url=mailbox.url, notify_dispatch="celery", celery_eager=True, notify_retry_backoff=1)
    dispatch.install(cfg)
    yield cfg
    dispatch.install(cfg.with_(notify_dispatch="none"))


def _patient(maker: sessionmaker[Session], cfg: Settings) -> tuple[str, str]:
    address = f"pt.{uid()}@mail.example"
    return create_patient(maker, cfg, address=address), address


def test_commit_enqueues_and_sends(eager: Settings, mailbox: MailCatcher) -> None:
    maker = session_maker(eager)
    pid, address = _patient(maker, eager)
    with maker() as session:
        oid = add_outbox(session, eager, pid).id
        assert mailbox.to(address) == []  # nothing before the commit
        session.commit()
        assert "outbox_new" not in session.info
    assert len(mailbox.to(address)) == 1
    assert outbox_row(maker, oid).status == "sent"


def test_rollback_enqueues_nothing_and_forgets(eager: Settings, mailbox: MailCatcher) -> None:
    maker = session_maker(eager)
    pid, address = _patient(maker, eager)
    with maker() as session:
        add_outbox(session, eager, pid)
        session.rollback()
        assert "outbox_new" not in session.info
        session.commit()  # a later, empty commit does not resurrect the ids
    assert mailbox.to(address) == []


def test_savepoint_rollback_keeps_the_outer_rows(eager: Settings, mailbox: MailCatcher) -> None:
    maker = session_maker(eager)
    pid, address = _patient(maker, eager)
    other_pid, other_address = _patient(maker, eager)
    with maker() as session:
        oid = add_outbox(session, eager, pid).id
        with session.begin_nested() as nested:
            add_outbox(session, eager, other_pid)
            nested.rollback()
        session.commit()
    assert len(mailbox.to(address)) == 1
    assert mailbox.to(other_address) == []
    assert outbox_row(maker, oid).status == "sent"


def test_dispatch_none_leaves_rows_pending(eager: Settings, mailbox: MailCatcher) -> None:
    dispatch.install(eager.with_(notify_dispatch="none"))
    maker = session_maker(eager)
    pid, address = _patient(maker, eager)
    with maker() as session:
        oid = add_outbox(session, eager, pid).id
        session.commit()
        assert "outbox_new" not in session.info
    assert mailbox.to(address) == []
    assert outbox_row(maker, oid).status == "pending"


def test_broker_down_keeps_the_commit(eager: Settings, mailbox: MailCatcher) -> None:
    """An enqueue that fails is left to the sweep: the transaction stands, the row stays pending."""
    dead = MailCatcher()  # a port nobody listens on: the broker connection is refused
    dispatch.install(eager.with_(celery_eager=False, broker_url=f"redis://127.0.0.1:{dead.port}/0"))
    maker = session_maker(eager)
    pid, address = _patient(maker, eager)
    with maker() as session:
        oid = add_outbox(session, eager, pid).id
        session.commit()
    assert outbox_row(maker, oid).status == "pending"
    assert mailbox.to(address) == []


def test_flask_sqlalchemy_sessions_dispatch_too(eager: Settings, mailbox: MailCatcher) -> None:
    """The web app commits through Flask-SQLAlchemy's own Session subclass."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from fhirserver.db import configure_engine, engine_options

    web = Flask("dispatch-test")
    web.config.update(
        SQLALCHEMY_DATABASE_URI=eager.database_url, SQLALCHEMY_ENGINE_OPTIONS=engine_options(eager.database_url)
    )
    fsa = SQLAlchemy()
    fsa.init_app(web)
    pid, address = _patient(session_maker(eager), eager)
    with web.app_context():
        configure_engine(fsa.engine)
        oid = add_outbox(fsa.session, eager, pid).id
        fsa.session.commit()
        fsa.engine.dispose()
    assert len(mailbox.to(address)) == 1
    assert outbox_row(session_maker(eager), oid).status == "sent"


def test_eager_with_smtp_down_keeps_the_commit(eager: Settings) -> None:
    """Eager mode (development without a worker) retries at once; the commit never fails."""
    from notifier.tasks import MAX_ATTEMPTS

    down = MailCatcher()  # never started
    dispatch.install(eager.with_(smtp_url=down.url))
    maker = session_maker(eager)
    pid, _ = _patient(maker, eager)
    with maker() as session:
        oid = add_outbox(session, eager, pid).id
        session.commit()
    row = outbox_row(maker, oid)
    assert (row.status, row.attempts, row.last_error) == ("failed", MAX_ATTEMPTS, "ConnectionRefusedError")

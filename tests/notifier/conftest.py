"""Fixtures of the notifier tests: a real SMTP server, the test database's sessions, own databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings
from fhirserver.migrate import upgrade
from notifier.tasks import session_maker
from tests.conftest import BACKENDS, create_pg_database, drop_pg_database
from tests.notifier.notifier_support import MailCatcher


@pytest.fixture()
def mailbox() -> Iterator[MailCatcher]:
    catcher = MailCatcher()
    catcher.start()
    yield catcher
    catcher.stop()


@pytest.fixture()
def nsettings(settings: Settings, mailbox: MailCatcher) -> Settings:
    """The run's settings, sending to this test's SMTP server with a short retry backoff."""
    return settings.with_(smtp_url=mailbox.url, notify_retry_backoff=1)


@pytest.fixture()
def maker(settings: Settings) -> sessionmaker[Session]:
    return session_maker(settings)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def own_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of this module's own, for tests that install process-wide listeners."""
    if request.param not in BACKENDS:
        pytest.skip(f"{request.param} not in TEST_BACKENDS")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('notifier-db') / 'own.db'}"
        upgrade(url)
        yield url
        return
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        from notifier import tasks

        maker = tasks._makers.pop(url, None)
        if maker is not None:
            maker.kw["bind"].dispose()
        drop_pg_database(url)

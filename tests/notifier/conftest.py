"""Fixtures of the notifier tests: a real SMTP server, the test database's sessions, own databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fhirserver.config import Settings
from notifier.tasks import session_maker
from tests.notifier.notifier_support import worker_database
from tests.support import BACKENDS, MailCatcher


@pytest.fixture()
def mailbox() -> Iterator[MailCatcher]:
    with MailCatcher() as catcher:
        yield catcher


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
    with worker_database(request.param, tmp_path_factory) as url:
        yield url

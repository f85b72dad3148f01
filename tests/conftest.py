"""Test harness: a fresh database per run and per backend, a Redis DB of our own, live servers.

Every test that takes ``settings``/``app``/``client``/``live_server`` runs twice: on
SQLite and on PostgreSQL. Each run creates its databases (a temporary SQLite file and
a ``fhirtest_<random>`` PostgreSQL database) and drops them at the end; the shared
``test`` database is never used. With ``REQUIRE_SERVICES=1`` (CI), a missing
PostgreSQL or Redis fails the run instead of skipping its tests. The plain helpers these
fixtures are built on (and that other folders import) are in tests/support.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirserver.config import Settings, load_settings
from tests.support import (
    BACKENDS,
    LiveServer,
    free_port,
    fresh_database,
    redis_database,
    test_env,
)

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session", autouse=True)
def _wire_accounts() -> None:
    """The tests are a composition root too: the FHIR core reaches accounts through this port."""
    from fhirserver.core.ports import install_mailbox_users, install_portal_accounts
    from smart_auth import accounts, mailbox_users

    install_portal_accounts(accounts)
    install_mailbox_users(mailbox_users)


@pytest.fixture(scope="session")
def redis_db() -> int:
    """This run's Redis database number (random unless TEST_REDIS_DB); the browser stack uses the next one."""
    return int(os.environ.get("TEST_REDIS_DB", secrets.randbelow(7) * 2 + 1))


@pytest.fixture(scope="session")
def redis_url(redis_db: int) -> Iterator[str]:
    """A Redis database of our own, flushed before and after."""
    with redis_database(redis_db) as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="session")
def server_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def settings(database_url: str, server_port: int, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("var")
    return load_settings(test_env(tmp, database_url, server_port))


@pytest.fixture(scope="session")
def app(settings: Settings) -> Any:
    from fhirserver.app import create_app

    return create_app(settings)


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def cli_env(database_url: str, server_port: int, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The run's settings as environment variables, for the ``fhirserver`` command (CliRunner).

    The same base URL, secrets and keys: the database is shared with the other test areas, so
    the clients and tokens the CLI makes must be the ones the run's live server and portal expect.
    """
    return test_env(
        tmp_path_factory.mktemp("cli-var"),
        database_url,
        server_port,
        SECRET_KEY=settings.secret_key,
        JWT_PRIVATE_KEY_PEM=settings.jwt_private_key_pem,
        PORTAL_CLIENT_SECRET=settings.portal_client_secret,
        CONSOLE_CLIENT_SECRET=settings.console_client_secret,
    )


@pytest.fixture()
def practice(app: Any, settings: Settings) -> Any:
    """A provider with one patient and their accounts (tests.factories.make_practice), committed."""
    from fhirserver.extensions import db
    from tests.factories import make_practice

    with app.app_context():
        p = make_practice(db.session, settings)
        db.session.remove()
    return p


@pytest.fixture()
def db_session(settings: Settings) -> Iterator[Any]:
    """A plain SQLAlchemy session for tests of the Flask-free core."""
    from fhirserver.db import make_sessionmaker

    maker = make_sessionmaker(settings.database_url)
    session = maker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
        session.get_bind().dispose()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def live_server(settings: Settings) -> Iterator[LiveServer]:
    from fhirserver.wsgi import create_wsgi

    server = LiveServer(create_wsgi(settings), int(settings.base_url.rsplit(":", 1)[1]))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

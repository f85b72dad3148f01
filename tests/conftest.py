"""Test harness: a fresh database per run and per backend, a Redis DB of our own, live servers.

Every test that takes ``settings``/``app``/``client``/``live_server`` runs twice: on
SQLite and on PostgreSQL. Each run creates its databases (a temporary SQLite file and
a ``fhirtest_<random>`` PostgreSQL database) and drops them at the end; the shared
``test`` database is never used. With ``REQUIRE_SERVICES=1`` (CI), a missing
PostgreSQL or Redis fails the run instead of skipping its tests.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirserver.config import Settings, load_settings
from fhirserver.migrate import upgrade

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
BACKENDS = [b for b in os.environ.get("TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
ARTIFACTS = Path(__file__).parent / "artifacts"
TEST_KEY = base64.b64encode(b"k" * 32).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _missing_service(what: str, exc: BaseException) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (REQUIRE_SERVICES=1) but unavailable: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


def create_pg_database() -> str:
    """Create a fresh PostgreSQL database for this run and return its SQLAlchemy URL."""
    import psycopg

    name = f"fhirtest_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _missing_service("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of our own (chosen at random), flushed before and after."""
    import redis

    db = int(os.environ.get("TEST_REDIS_DB", secrets.randbelow(14) + 1))
    url = f"{REDIS_URL}/{db}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.flushdb()
    except redis.RedisError as exc:
        _missing_service("Redis", exc)
    yield url
    client.flushdb()


def test_env(tmp: Path, database_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment a test server runs with: cheap hashing, fixed keys, own folders."""
    env = {
        "FHIRSERVER_ENV": "development",
        "VAR_DIR": str(tmp),
        "DATABASE_URL": database_url,
        "BASE_URL": f"http://127.0.0.1:{port}",
        "ENCRYPTION_KEYS": f"test1:{TEST_KEY}",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "1024",
        "BROKER_URL": "memory://",
        "NOTIFY_DISPATCH": "none",
        "PORTAL_SESSION_URL": f"filesystem://{tmp / 'portal-sessions'}",
    }
    env.update(extra)
    return env


test_env.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test, wherever it is imported


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
        upgrade(url)
        yield url
        return
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


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


class LiveServer:
    """A threaded WSGI server on a real port, so that the portal can call /fhir over HTTP."""

    def __init__(self, wsgi_app: Any, port: int) -> None:
        from werkzeug.serving import make_server

        self.url = f"http://127.0.0.1:{port}"
        self._server = make_server("127.0.0.1", port, wsgi_app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


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

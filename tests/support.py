"""Plain helpers shared by every test folder (the fixtures built on them are in tests/conftest.py).

One place for what several folders need: unique names, polling, free ports, a database
of the run's own (SQLite file or ``fhirtest_<random>`` PostgreSQL database), the test
server's environment, a threaded live server, and a real SMTP server that keeps mail.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
BACKENDS = [b for b in os.environ.get("TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
TEST_KEY = base64.b64encode(b"k" * 32).decode()


def uid() -> str:
    """A short unique tag for names, so that tests never depend on an empty database."""
    return uuid.uuid4().hex[:10]


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def missing_service(what: str, exc: BaseException) -> None:
    """Skip the test, or fail it when CI says every service must be there (REQUIRE_SERVICES=1)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (REQUIRE_SERVICES=1) but unavailable: {exc}")
    pytest.skip(f"{what} unavailable: {exc}")


# -- databases of the run's own ------------------------------------------------------------------


def create_pg_database() -> str:
    """Create a fresh PostgreSQL database for this run and return its SQLAlchemy URL."""
    import psycopg

    name = f"fhirtest_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        missing_service("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database of our own on ``backend`` ("sqlite" or "postgresql"); PostgreSQL's is
    dropped on exit (a SQLite file goes with pytest's temporary folders)."""
    from fhirserver.migrate import upgrade

    if backend == "sqlite":
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


# -- servers -------------------------------------------------------------------------------------


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


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def redis_database(db: int) -> Iterator[str]:
    """Redis database number ``db`` as a URL, flushed before and after (skip or fail if Redis is down)."""
    import redis

    url = f"{REDIS_URL}/{db}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.flushdb()
    except redis.RedisError as exc:
        missing_service("Redis", exc)
    try:
        yield url
    finally:
        client.flushdb()


@contextmanager
def celery_worker(env: dict[str, str], log: Path) -> Iterator[Path]:
    """A real ``celery -A notifier.celery_app worker`` process with ``env``; yields its log file.

    Stopped by PID at the end. The log stays in tests/artifacts/ for failed runs.
    """
    import subprocess
    import sys

    celery = Path(sys.executable).with_name("celery")
    cmd = [
        str(celery),
        "-A",
        "notifier.celery_app",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"test-worker-{uid()}@localhost",
    ]
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or " ready." in log.read_text(), 60, "the Celery worker")
        if proc.poll() is not None:
            pytest.fail(f"the Celery worker exited:\n{log.read_text()}")
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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


# -- a real SMTP server --------------------------------------------------------------------------


@dataclass
class Captured:
    """One email as the SMTP server received it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""


class MailCatcher:
    """A real SMTP server (aiosmtpd) on a fixed port that keeps messages in memory.

    ``stop()`` and ``start()`` take it down and up on the same port, to play an outage;
    ``delay`` slows DATA down so that concurrent senders overlap; ``refuse`` answers 550.
    As a context manager it runs for the ``with`` block.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[Captured] = []
        self.delay = 0.0
        self.refuse = False
        self._lock = threading.Lock()
        self._controller: Any = None

    def __enter__(self) -> MailCatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.messages.append(
                Captured(
                    envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content)
                )
            )
        return "250 Message accepted"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        if self._controller is None:
            self._controller = Controller(self, hostname="127.0.0.1", port=self.port, server_hostname="localhost")
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Captured]:
        """The messages for ``address`` (compared without case, as mail systems do)."""
        wanted = address.lower()
        with self._lock:
            return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    def wait_for(self, address: str, count: int = 1, timeout: float = 30.0) -> list[Captured]:
        """The messages for ``address`` once there are at least ``count`` of them."""
        return wait_until(lambda: len(self.to(address)) >= count and self.to(address), timeout, f"{count} email(s)")

"""The browser tests' own stack: PostgreSQL, the whole WSGI app on a real port, a real SMTP server.

Built once per run (session scope) and only on PostgreSQL. Notifications run through
Celery in eager mode (CELERY_EAGER=1, NOTIFY_DISPATCH=celery) and reach an aiosmtpd
server started here, so a test can follow the link of the email a patient receives.
Users, resources and clients are created with our public functions (test code only);
the portal itself is driven only through Chromium.
"""

from __future__ import annotations

import email
import email.policy
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS, LiveServer, create_pg_database, drop_pg_database, free_port, test_env

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "Correct-horse-battery-9"


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH", "/usr/lib/chromium/chromium")
    if not os.path.exists(path) and os.path.exists("/usr/bin/chromium"):
        path = "/usr/bin/chromium"
    return path


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def uid() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class Mail:
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""


class MailSink:
    """A real SMTP server (aiosmtpd) that keeps every message in memory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Mail] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(Mail(list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content)))
        return "250 OK"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def to(self, address: str) -> list[Mail]:
        with self._lock:
            return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]


@dataclass
class Person:
    """A user account (and its FHIR resource) for a browser test."""

    username: str
    password: str
    ref: str
    name: str
    email: str = ""

    @property
    def id(self) -> str:
        return self.ref.split("/", 1)[1]


@dataclass
class Stack:
    url: str
    settings: Any
    mail: MailSink
    maker: Any
    people: list[Person] = field(default_factory=list)

    def session(self) -> Any:
        return self.maker()

    # -- data, through our own public functions (test code only) ----------------------------

    def _repo(self, session: Any) -> Any:
        from fhirserver.core.principal import system_principal
        from fhirserver.core.repository import Repository

        return Repository(session, self.settings, system_principal("browser-tests"))

    def provider(self, family: str | None = None, given: str = "Ada") -> Person:
        from smart_auth import accounts

        family = family or f"Okafor{uid()}"
        with self.session() as session:
            name = {"family": family, "given": [given], "prefix": ["Dr"]}
            prac = self._repo(session).create("Practitioner", {"resourceType": "Practitioner", "name": [name]})
            username = f"dr{uid()}"
            accounts.create_user(
                session,
                settings=self.settings,
                username=username,
                password=PASSWORD,
                role="provider",
                fhir_user=f"Practitioner/{prac.res_id}",
                display_name=f"Dr {given} {family}",
            )
            session.commit()
        return Person(username, PASSWORD, f"Practitioner/{prac.res_id}", f"Dr {given} {family}")

    def patient(self, providers: list[Person], given: str = "Lena", family: str | None = None) -> Person:
        from smart_auth import accounts

        family = family or f"Rivera{uid()}"
        address = f"{given.lower()}.{uid()}@mail.example"
        with self.session() as session:
            pat = self._repo(session).create(
                "Patient",
                {
                    "resourceType": "Patient",
                    "name": [{"use": "official", "family": family, "given": [given]}],
                    "birthDate": "1980-04-02",
                    "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": address}],
                    "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "IL", "postalCode": "62701"}],
                    "generalPractitioner": [{"reference": p.ref} for p in providers],
                },
            )
            username = f"pat{uid()}"
            accounts.create_user(
                session,
                settings=self.settings,
                username=username,
                password=PASSWORD,
                role="patient",
                fhir_user=f"Patient/{pat.res_id}",
                display_name=f"{given} {family}",
            )
            session.commit()
        return Person(username, PASSWORD, f"Patient/{pat.res_id}", f"{given} {family}", address)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if "postgresql" not in BACKENDS:
        pytest.skip("browser tests run on PostgreSQL only")
    from fhirserver.config import load_settings
    from fhirserver.db import make_sessionmaker
    from fhirserver.migrate import upgrade

    db_url = create_pg_database()
    mail = MailSink()
    server = None
    try:
        upgrade(db_url)
        mail.start()
        port = free_port()
        env = test_env(
            tmp_path_factory.mktemp("browser-var"),
            db_url,
            port,
            SMTP_URL=mail.url,
            CELERY_EAGER="1",
            NOTIFY_DISPATCH="celery",
            SECRET_KEY=secrets.token_urlsafe(32),
            PORTAL_CLIENT_SECRET=secrets.token_urlsafe(24),
            CONSOLE_CLIENT_SECRET=secrets.token_urlsafe(24),
            SESSION_IDLE_MINUTES="30",
        )
        settings = load_settings(env)
        maker = make_sessionmaker(db_url)

        from fhirserver.seed import seed_clients
        from notifier.dispatch import install

        with maker() as session:
            seed_clients(session, settings)
            session.commit()
        install(settings)  # enqueue (eagerly: CELERY_EAGER=1) the notifications of every commit

        from fhirserver.wsgi import create_wsgi

        server = LiveServer(create_wsgi(settings), port)
        yield Stack(server.url, settings, mail, maker)
    finally:
        if server is not None:
            server.stop()
        mail.stop()
        drop_pg_database(db_url)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if not os.path.exists(path):
        pytest.skip(f"no Chromium at {path}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def visited_urls() -> list[str]:
    """Every URL any browser context of the test requested (to check that no PHI is in one)."""
    return []


@pytest.fixture()
def new_page(browser: Any, visited_urls: list[str]) -> Iterator[Callable[[], Any]]:
    """Fresh browser contexts (one per person: separate cookies), closed after the test."""
    contexts: list[Any] = []

    def make() -> Any:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900}, locale="en-US")
        ctx.set_default_timeout(20_000)
        ctx.on("request", lambda req: visited_urls.append(req.url))
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture()
def shot(artifacts: Path, request: pytest.FixtureRequest) -> Callable[[Any, str], None]:
    """Save a full-page screenshot into tests/artifacts/ named after the test and step."""
    test = request.node.name

    def take(page: Any, step: str) -> None:
        page.screenshot(path=str(artifacts / f"{test}-{step}.png"), full_page=True)

    return take

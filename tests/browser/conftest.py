"""The browser tests' own stack: PostgreSQL, the whole WSGI app on a real port, a real SMTP server.

Built once per run (session scope) and only on PostgreSQL. The portal keeps its sessions in
Redis (the production backend). Notifications go the production way: the outbox row is
enqueued after commit to Redis (a database number of the browser tests' own), a real Celery
worker process sends it, and it reaches an aiosmtpd server started here, so a test can
follow the link of the email a patient receives. Users, resources and clients are created
with our public functions (test code only); the portal itself is driven only through Chromium.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import totp
from tests.support import (
    BACKENDS,
    LiveServer,
    MailCatcher,
    celery_worker,
    free_port,
    fresh_database,
    redis_database,
    test_env,
    uid,
)

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
    mail: MailCatcher
    maker: Any
    people: list[Person] = field(default_factory=list)

    def session(self) -> Any:
        return self.maker()

    # -- data, through our own public functions (test code only) ----------------------------

    def _repo(self, session: Any) -> Any:
        from fhirserver.core.principal import system_principal
        from fhirserver.core.repository import Repository

        return Repository(session, self.settings, system_principal("browser-tests"))

    def _account(
        self, session: Any, prefix: str, role: str, fhir_user: str, display_name: str, enrol_mfa: bool = False
    ) -> str:
        """A user account with the shared test password; returns its username. ``enrol_mfa``:
        with an authenticator of known secret (tests/totp.py), which the sign-in helpers answer."""
        from smart_auth import accounts

        username = f"{prefix}{uid()}"
        user = accounts.create_user(
            session,
            settings=self.settings,
            username=username,
            password=PASSWORD,
            role=role,
            fhir_user=fhir_user,
            display_name=display_name,
        )
        if enrol_mfa:
            totp.enrol(session, self.settings, user)
        return username

    def provider(self, family: str | None = None, given: str = "Ada", enrol_mfa: bool = True) -> Person:
        family = family or f"Okafor{uid()}"
        with self.session() as session:
            name = {"family": family, "given": [given], "prefix": ["Dr"]}
            prac = self._repo(session).create("Practitioner", {"resourceType": "Practitioner", "name": [name]})
            ref = f"Practitioner/{prac.res_id}"
            username = self._account(session, "dr", "provider", ref, f"Dr {given} {family}", enrol_mfa)
            session.commit()
        return Person(username, PASSWORD, ref, f"Dr {given} {family}")

    def patient(self, providers: list[Person], given: str = "Lena", family: str | None = None) -> Person:
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
            ref = f"Patient/{pat.res_id}"
            username = self._account(session, "pat", "patient", ref, f"{given} {family}")
            session.commit()
        return Person(username, PASSWORD, ref, f"{given} {family}", address)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_db: int, artifacts: Path) -> Iterator[Stack]:
    if "postgresql" not in BACKENDS:
        pytest.skip("browser tests run on PostgreSQL only")
    from fhirserver.config import load_settings
    from fhirserver.db import make_sessionmaker
    from fhirserver.seed import seed_clients
    from fhirserver.wsgi import create_wsgi
    from notifier.dispatch import install

    with (
        fresh_database("postgresql", tmp_path_factory) as db_url,
        MailCatcher() as mail,
        # Not the run's own Redis DB: the notifier tests' worker must not take our tasks.
        redis_database(redis_db + 1) as broker,
    ):
        port = free_port()
        env = test_env(
            tmp_path_factory.mktemp("browser-var"),
            db_url,
            port,
            SMTP_URL=mail.url,
            BROKER_URL=broker,
            NOTIFY_DISPATCH="celery",
            NOTIFY_RETRY_BACKOFF="1",
            SECRET_KEY=secrets.token_urlsafe(32),
            PORTAL_CLIENT_SECRET=secrets.token_urlsafe(24),
            CONSOLE_CLIENT_SECRET=secrets.token_urlsafe(24),
            SESSION_IDLE_MINUTES="30",
            # The portal's sessions on Redis, as in production (the HTTP tests use the files).
            PORTAL_SESSION_URL=broker,
        )
        settings = load_settings(env)
        maker = make_sessionmaker(db_url)
        with maker() as session:
            seed_clients(session, settings)
            session.commit()
        install(settings)  # enqueue the notifications of every commit to the worker below

        server = LiveServer(create_wsgi(settings), port)
        try:
            with celery_worker(env, artifacts / "browser-worker.log"):
                yield Stack(server.url, settings, mail, maker)
        finally:
            server.stop()


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

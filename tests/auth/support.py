"""Helpers for the login-server tests: users, clients, forms with CSRF, and the authorize dance.

Everything is created through our own public functions (accounts, clients) with names
unique per call, so tests never depend on an empty database.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth import accounts, clients
from tests import totp
from tests.support import uid

PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
COOKIE = "fhir_auth_session"


def random_address() -> str:
    """A made-up client address per test, so failed logins of one test never throttle another."""
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def new_web_client(app: Any) -> Any:
    web = app.test_client()
    web.environ_base["REMOTE_ADDR"] = random_address()
    return web


def make_user(
    session: Session,
    settings: Settings,
    *,
    role: str = "patient",
    fhir_user: str | None = None,
    password: str = PASSWORD,
    must_change: bool = False,
    staff_of: tuple[str, ...] = (),
    prefix: str = "user",
    enrol_mfa: bool | None = None,
) -> Any:
    """A user; providers and staff get an authenticator with a known secret (tests/totp.py)
    unless ``enrol_mfa=False``, so that ``login`` answers the second factor for them."""
    if fhir_user is None and role == "patient":
        fhir_user = f"Patient/p{uid()}"
    if fhir_user is None and role == "provider":
        fhir_user = f"Practitioner/d{uid()}"
    user = accounts.create_user(
        session,
        username=f"{prefix}{uid()}",
        password=password,
        role=role,
        settings=settings,
        fhir_user=fhir_user,
        display_name=f"Test {role}",
        must_change_password=must_change,
        staff_of=staff_of,
    )
    if enrol_mfa or (enrol_mfa is None and role in ("provider", "staff")):
        totp.enrol(session, settings, user)
    session.commit()
    return user


@dataclass
class RegisteredApp:
    client_id: str
    redirect_uri: str
    secret: str | None
    scope: str


def make_client(
    session: Session,
    *,
    scope: str = "launch/patient openid fhirUser offline_access online_access patient/*.cruds user/*.cruds",
    confidential: bool = False,
    first_party: bool = True,
    redirect_uri: str | None = None,
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token"),
) -> RegisteredApp:
    client_id = f"app-{uid()}"
    redirect = redirect_uri or f"https://app-{uid()}.example/callback"
    secret = secrets.token_urlsafe(24) if confidential else None
    clients.register_client(
        session,
        client_id=client_id,
        name=f"Test App {client_id}",
        redirect_uris=[redirect],
        scope=scope,
        secret=secret,
        first_party=first_party,
        grant_types=grant_types,
    )
    session.commit()
    return RegisteredApp(client_id, redirect, secret, scope)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def csrf_from(html: bytes | str) -> str:
    text = html.decode() if isinstance(html, bytes) else html
    match = CSRF_RE.search(text)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(web: Any, username: str, password: str = PASSWORD) -> Any:
    """GET the login form, POST it with its CSRF token; returns the POST response (not followed).

    When the password leads to the second factor and the user's authenticator is known
    (tests/totp.py), the code is given too and the answer of that POST is returned.
    """
    page = web.get("/auth/login")
    r = web.post("/auth/login", data={"csrf_token": csrf_from(page.data), "username": username, "password": password})
    if r.status_code == 303 and totp.needs_code(r.headers["Location"]) and username in totp.SECRETS:
        r = answer_mfa(web, username)
    return r


def answer_mfa(web: Any, username: str, code: str | None = None) -> Any:
    """POST the second-factor form (the user's next code unless ``code``); returns the answer."""
    page = web.get("/auth/mfa")
    assert page.status_code == 200, page.data[:300]
    value = code if code is not None else totp.code_for(username)
    return web.post("/auth/mfa", data={"csrf_token": csrf_from(page.data), "code": value})


def authorize_params(
    settings: Settings, app: RegisteredApp, scope: str, challenge: str | None, state: str = "state-123", **over: Any
) -> dict[str, str]:
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uri,
        "scope": scope,
        "state": state,
        "aud": settings.fhir_base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(over)
    return {k: v for k, v in params.items() if v is not None}


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def get_code(
    web: Any,
    settings: Settings,
    app: RegisteredApp,
    username: str,
    scope: str,
    verifier_challenge: tuple[str, str] | None = None,
    logged_in: bool = False,
) -> tuple[str, str]:
    """Run authorize → login → (first-party) code. Returns (code, verifier)."""
    verifier, challenge = verifier_challenge or pkce_pair()
    r = web.get("/auth/authorize", query_string=authorize_params(settings, app, scope, challenge))
    if not logged_in:
        assert r.status_code in (302, 303), r.data[:500]
        assert r.headers["Location"].endswith("/auth/login")
        r = login(web, username)
        assert r.status_code == 303, r.data[:500]
        r = web.get(r.headers["Location"])
    assert r.status_code == 302, r.data[:800]
    location = r.headers["Location"]
    assert location.startswith(app.redirect_uri), location
    q = query_of(location)
    assert q.get("state") == "state-123" and "error" not in q, q
    return q["code"], verifier


def basic_auth(app: RegisteredApp) -> dict[str, str]:
    """The HTTP Basic header a confidential client authenticates with at the token endpoint."""
    token = base64.b64encode(f"{app.client_id}:{app.secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def exchange(web: Any, app: RegisteredApp, code: str, verifier: str | None, *, basic: bool = True, **extra: Any) -> Any:
    data: dict[str, Any] = {"grant_type": "authorization_code", "code": code, "redirect_uri": app.redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    headers = {}
    if app.secret and basic:
        headers = basic_auth(app)
    elif app.secret:
        data.update(client_id=app.client_id, client_secret=app.secret)
    else:
        data["client_id"] = app.client_id
    data.update(extra)
    return web.post("/auth/token", data={k: v for k, v in data.items() if v is not None}, headers=headers)


def refresh(web: Any, app: RegisteredApp, refresh_token: str, scope: str | None = None) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope is not None:
        data["scope"] = scope
    headers = {}
    if app.secret:
        headers = basic_auth(app)
    else:
        data["client_id"] = app.client_id
    return web.post("/auth/token", data=data, headers=headers)


def build_app(settings: Settings) -> Any:
    """A fresh API app for settings that differ from the session's (e.g. an https base URL)."""
    from fhirserver.app import create_app

    return create_app(settings)

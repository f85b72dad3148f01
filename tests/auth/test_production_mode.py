"""Production mode (FHIRSERVER_ENV=production): __Host- cookies, HSTS on every path, /fhir reads no cookie.

Development (``make run`` on http://127.0.0.1) relaxes exactly the ``__Host-`` prefix, the
Secure flag and HSTS; everything else (HttpOnly, SameSite, Path=/, no Domain) is the same.
The whole origin is served by ``fhirserver.wsgi.create_wsgi``, the portal included, as
gunicorn serves it. tests/test_tls.py checks the same over real TLS.
"""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import Client

from fhirserver.config import Settings
from fhirserver.security_headers import HSTS
from fhirserver.wsgi import create_wsgi
from smart_auth import device_cookies
from smart_auth.sessions import COOKIE_NAME, PRE_COOKIE_NAME
from tests.auth.support import build_app, login, make_user, new_web_client

HTTPS = "https://clinic.example"


def _set_cookies(response: Any) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


def _attributes(header: str) -> set[str]:
    return {part.strip() for part in header.split(";")[1:]}


@pytest.fixture(scope="module")
def production(settings: Settings) -> Settings:
    return settings.with_(dev_mode=False)


@pytest.fixture(scope="module")
def production_app(production: Settings) -> Any:
    return build_app(production)


def test_F5_login_server_cookies_are_host_prefixed_secure_http_only_same_site(
    production_app: Any, production: Settings, db_session: Any
) -> None:
    user = make_user(db_session, production)
    web = new_web_client(production_app)
    page = web.get("/auth/login")
    pre = _set_cookies(page)["__Host-" + PRE_COOKIE_NAME]
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= _attributes(pre)
    r = login(web, user.username)
    assert r.status_code == 303, r.data
    cookies = _set_cookies(r)
    session = cookies["__Host-" + COOKIE_NAME]
    device = cookies["__Host-" + device_cookies.COOKIE_NAME]
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= _attributes(session)  # OAuth redirects: Lax
    assert {"Secure", "HttpOnly", "Path=/", "SameSite=Strict"} <= _attributes(device)  # read by our POST only
    for header in (pre, session, device):
        assert not any(a.lower().startswith("domain=") for a in _attributes(header))  # __Host-: host-only
    assert COOKIE_NAME not in cookies and PRE_COOKIE_NAME not in cookies  # no unprefixed twin
    # The prefixed cookies are the ones the server reads back: the user is signed in.
    assert web.get("/auth/").status_code == 200
    assert new_web_client(production_app).get("/auth/").status_code == 302


def test_F5_development_relaxes_exactly_the_prefix_and_the_secure_flag(app: Any, settings: Settings) -> None:
    assert settings.dev_mode and settings.base_url.startswith("http://")
    web = new_web_client(app)
    r = web.get("/auth/login")
    pre = _set_cookies(r)[PRE_COOKIE_NAME]
    assert {"HttpOnly", "Path=/", "SameSite=Lax"} <= _attributes(pre) and "Secure" not in _attributes(pre)
    assert "Strict-Transport-Security" not in r.headers


@pytest.mark.parametrize("path", ["/auth/login", "/auth/jwks", "/fhir/metadata", "/fhir/Patient", "/portal/", "/nope"])
def test_F7_hsts_on_every_path_in_production(production: Settings, settings: Settings, path: str) -> None:
    live = Client(_wsgi(production))
    r = live.get(path, base_url=HTTPS)
    assert r.headers.get("Strict-Transport-Security") == HSTS, path
    assert int(HSTS.split(";")[0].split("=")[1]) >= 31536000
    assert len(r.headers.getlist("Strict-Transport-Security")) == 1
    dev = Client(_wsgi(settings)).get(path)
    assert "Strict-Transport-Security" not in dev.headers, path


_WSGI: dict[bool, Any] = {}


def _wsgi(settings: Settings) -> Any:
    """The whole origin (API, auth, portal) for production or development, built once per module."""
    if settings.dev_mode not in _WSGI:
        _WSGI[settings.dev_mode] = create_wsgi(settings)
    return _WSGI[settings.dev_mode]


def test_F5_fhir_ignores_cookies_a_request_with_only_cookies_is_401(
    production_app: Any, production: Settings, db_session: Any
) -> None:
    user = make_user(db_session, production, role="patient")
    web = new_web_client(production_app)
    assert login(web, user.username).status_code == 303
    assert web.get_cookie("__Host-" + COOKIE_NAME) is not None  # the browser holds the signed-in cookie
    assert web.get("/auth/").status_code == 200
    for path in ("/fhir/Patient", f"/fhir/{user.fhir_user}", "/fhir/Communication"):
        r = web.get(path)  # the test client sends every cookie it holds for the host
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Set-Cookie" not in r.headers


def test_F3_production_without_mfa_says_so_at_start(settings: Settings, caplog: Any) -> None:
    """Only the demo turns two-step sign-in off; a production server started that way warns."""
    from fhirserver.app import create_app

    with caplog.at_level("WARNING", logger="fhirserver.app"):
        create_app(settings.with_(dev_mode=False, mfa_required=False))
    assert any("MFA_REQUIRED=0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fhirserver.app"):
        create_app(settings.with_(dev_mode=False, mfa_required=True))
    assert not any("MFA_REQUIRED=0" in r.getMessage() for r in caplog.records)


def test_F5_production_on_plain_http_says_browsers_cannot_sign_in(settings: Settings, caplog: Any) -> None:
    from fhirserver.app import create_app

    with caplog.at_level("WARNING", logger="fhirserver.app"):
        create_app(settings.with_(dev_mode=False, base_url="http://clinic.example"))
    assert any("Secure cookies need https" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fhirserver.app"):
        create_app(settings.with_(dev_mode=False, base_url=HTTPS))
    assert not any("Secure cookies need https" in r.getMessage() for r in caplog.records)

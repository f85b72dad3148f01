"""The portal's own behaviour that needs no API: headers, sessions, CSRF, sign-in gates.

The app runs mounted at /portal (SCRIPT_NAME), as fhirserver.wsgi mounts it.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from portal_app.app import create_portal_app
from portal_app.config import PortalConfig
from portal_app.sessions import COOKIE_NAME, store_key

BASE = "http://portal.test"
ROOT = BASE + "/portal/"


def make_app(session_url: str, **extra: Any) -> Any:
    config = PortalConfig(
        base_url=BASE,
        secret_key="test-secret-key",
        patient_client_secret="portal-secret",
        console_client_secret="console-secret",
        session_url=session_url,
        **{"dev_mode": True, **extra},  # http://portal.test: development's cookies
    )
    app = create_portal_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def portal(tmp_path: Path) -> Any:
    return make_app(f"filesystem://{tmp_path / 'sessions'}")


@pytest.fixture()
def web(portal: Any) -> Any:
    return portal.test_client()


def jwt(claims: dict[str, Any]) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'RS256'})}.{enc(claims)}.signature"


def sign_in(web: Any, realm: str, claims: dict[str, Any], expires_in: float = 3600) -> None:
    """Put tokens in the server-side session as the callback would (no API is called)."""
    with web.session_transaction(base_url=ROOT) as sess:
        realms = dict(sess.get("realms") or {})
        realms[realm] = {
            "access_token": jwt(claims),
            "expires_at": time.time() + expires_in,
            "scope": "openid",
            "refresh_token": None,
            "patient": claims.get("patient"),
            "id_token": None,
        }
        sess["realms"] = realms


def get(web: Any, path: str, **kw: Any) -> Any:
    return web.get(path, base_url=ROOT, **kw)


def post(web: Any, path: str, **kw: Any) -> Any:
    return web.post(path, base_url=ROOT, **kw)


def test_pages_carry_the_security_headers(web: Any) -> None:
    resp = get(web, "/")
    assert resp.status_code == 200
    csp = resp.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == f"'self' {BASE}"
    assert "unsafe-inline" not in csp
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Frame-Options"] == "DENY"


def test_no_inline_script_in_pages(web: Any) -> None:
    html = get(web, "/").get_data(as_text=True)
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag
    assert not re.search(r"\son[a-z]+=", html)


def test_error_pages_are_no_store_too(web: Any) -> None:
    resp = get(web, "/no-such-page")
    assert resp.status_code == 404
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Content-Security-Policy" in resp.headers


def test_static_files_may_be_cached(web: Any) -> None:
    resp = get(web, "/static/portal.css")
    assert resp.status_code == 200
    assert resp.headers.get("Cache-Control") != "no-store"
    assert "Content-Security-Policy" in resp.headers


def test_session_cookie_is_scoped_and_http_only(web: Any) -> None:
    cookie = get(web, "/").headers["Set-Cookie"]
    assert cookie.startswith(COOKIE_NAME + "=")
    assert "HttpOnly" in cookie
    assert "Path=/;" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # development on http; production (and https) turn it on


def test_F5_production_and_https_make_the_cookie_host_prefixed_and_secure(tmp_path: Path) -> None:
    dev = make_app(f"filesystem://{tmp_path}/s")
    https_dev = create_portal_app(
        PortalConfig("https://portal.test", "k", "a", "b", f"filesystem://{tmp_path}/s2", dev_mode=True)
    )
    production = create_portal_app(PortalConfig("http://portal.test", "k", "a", "b", f"filesystem://{tmp_path}/s3"))
    assert not dev.config["SESSION_COOKIE_SECURE"] and dev.config["SESSION_COOKIE_NAME"] == COOKIE_NAME
    for app in (https_dev, production):
        assert app.config["SESSION_COOKIE_SECURE"]
        assert app.config["SESSION_COOKIE_NAME"] == "__Host-" + COOKIE_NAME
        assert app.config["SESSION_COOKIE_PATH"] == "/" and app.config["SESSION_COOKIE_HTTPONLY"]


def test_session_data_stays_on_the_server(web: Any, tmp_path: Path) -> None:
    sign_in(web, "patient", {"role": "patient", "patient": "p1", "fhirUser": "Patient/p1"})
    cookie = web.get_cookie(COOKIE_NAME, domain="portal.test", path="/")
    assert cookie is not None
    assert "." not in cookie.value  # an opaque id, not a signed payload
    files = list((tmp_path / "sessions").iterdir())
    assert files, "the session must be stored in the configured folder"


def test_redis_sessions(redis_url: str) -> None:
    import redis

    app = make_app(redis_url)
    web = app.test_client()
    get(web, "/")
    sid = web.get_cookie(COOKIE_NAME, domain="portal.test", path="/").value
    client = redis.Redis.from_url(redis_url)
    assert client.exists(store_key(sid))  # under a hash of the id (tests/portal/test_session_store.py)
    ttl = client.ttl(store_key(sid))
    assert 0 < ttl <= 15 * 60


def test_bad_session_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_app("memcached://nowhere")


def test_post_without_csrf_token_is_rejected(web: Any) -> None:
    sign_in(web, "console", {"role": "provider", "fhirUser": "Practitioner/dr1"})
    for path in (
        "/logout",
        "/console/logout",
        "/messages/abc/mark-read",
        "/console/messages/abc/mark-read",
        "/console/patients/p1/grant-access",
        "/console/patients/p1/reset-password",
    ):
        resp = post(web, path, data={})
        assert resp.status_code == 400, path
        assert "This form has expired" in resp.get_data(as_text=True)
    # Still signed in: nothing happened.
    with web.session_transaction(base_url=ROOT) as sess:
        assert "console" in sess["realms"]


def test_post_with_a_foreign_csrf_token_is_rejected(portal: Any) -> None:
    """A token valid for another session (the attacker's own) does not work in the victim's."""
    from itsdangerous import URLSafeTimedSerializer

    alice = portal.test_client()
    sign_in(alice, "console", {"role": "provider", "fhirUser": "Practitioner/dr1"})
    forged = URLSafeTimedSerializer(portal.secret_key, salt="wtf-csrf-token").dumps("mallory-raw-token")
    resp = post(alice, "/console/messages/abc/mark-read", data={"csrf_token": forged})
    assert resp.status_code == 400
    assert "This form has expired" in resp.get_data(as_text=True)


def test_signed_out_pages_go_to_sign_in(web: Any) -> None:
    for path, login in (
        ("/compose", "/portal/login"),
        ("/sent", "/portal/login"),
        ("/messages/abc", "/portal/login"),
        ("/console/", "/portal/console/login"),
        ("/console/patients/p1", "/portal/console/login"),
    ):
        resp = get(web, path)
        assert resp.status_code == 303, path
        assert resp.headers["Location"].endswith(login), path


def test_destination_after_sign_in_is_kept_server_side(web: Any) -> None:
    get(web, "/console/patients/p42")
    with web.session_transaction(base_url=ROOT) as sess:
        assert sess["destinations"] == {"console": "/portal/console/patients/p42"}


def test_alerts_json_when_signed_out(web: Any) -> None:
    resp = get(web, "/console/alerts.json")
    assert resp.status_code == 401
    assert resp.get_json() == {"error": "signed-out"}
    assert resp.headers["Cache-Control"] == "no-store"


def test_patient_account_cannot_use_the_console(web: Any) -> None:
    sign_in(web, "console", {"role": "patient", "fhirUser": "Patient/p1", "patient": "p1"})
    resp = get(web, "/console/")
    assert resp.status_code == 403
    assert "provider console is for providers" in resp.get_data(as_text=True)


def test_provider_account_cannot_use_the_patient_portal(web: Any) -> None:
    sign_in(web, "patient", {"role": "provider", "fhirUser": "Practitioner/dr1"})
    resp = get(web, "/compose")
    assert resp.status_code == 403
    assert "patient portal is for patients" in resp.get_data(as_text=True)


def test_idle_timeout_signs_out(web: Any) -> None:
    sign_in(web, "patient", {"role": "patient", "patient": "p1"})
    with web.session_transaction(base_url=ROOT) as sess:
        sess["last_seen"] = time.time() - 16 * 60
    resp = get(web, "/")
    assert resp.status_code == 200
    assert "signed out after a period of inactivity" in resp.get_data(as_text=True)
    with web.session_transaction(base_url=ROOT) as sess:
        assert not sess.get("realms")


def test_alerts_polling_does_not_count_as_activity(web: Any) -> None:
    sign_in(web, "console", {"role": "provider", "fhirUser": "Practitioner/dr1"})
    old = time.time() - 60
    with web.session_transaction(base_url=ROOT) as sess:
        sess["last_seen"] = old
    get(web, "/console/alerts.json")
    with web.session_transaction(base_url=ROOT) as sess:
        assert sess["last_seen"] == old


def test_expired_token_without_refresh_means_sign_in_again(web: Any) -> None:
    sign_in(web, "patient", {"role": "patient", "patient": "p1"}, expires_in=-10)
    resp = get(web, "/sent")
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith("/portal/login")
    with web.session_transaction(base_url=ROOT) as sess:
        assert "patient" not in (sess.get("realms") or {})


def test_callback_with_unknown_state_is_refused(web: Any) -> None:
    resp = get(web, "/callback?code=abc&state=forged")
    assert resp.status_code == 400
    assert "expired" in resp.get_data(as_text=True)
    with web.session_transaction(base_url=ROOT) as sess:
        assert not sess.get("realms")


def test_mark_read_back_link_cannot_leave_the_console(web: Any) -> None:
    """An open redirect check: even a refused action returns only to a console path."""
    from portal_app import console_views

    with web.application.test_request_context(
        "/console/x", base_url=ROOT, method="POST", data={"back": "https://evil.example/"}
    ):
        assert console_views._safe_back("/portal/console/") == "/portal/console/"
    with web.application.test_request_context(
        "/console/x", base_url=ROOT, method="POST", data={"back": "/portal/console/provider-messages"}
    ):
        assert console_views._safe_back("/portal/console/") == "/portal/console/provider-messages"


def test_alerts_polling_never_writes_the_session(web: Any) -> None:
    """A poll that overlaps a sign-in must not write back its stale copy of the session."""
    sign_in(web, "console", {"role": "provider", "fhirUser": "Practitioner/dr1"}, expires_in=-10)
    resp = get(web, "/console/alerts.json")
    assert resp.status_code == 200
    assert resp.get_json() == {"count": None}  # expired: no refresh from a poll
    assert "Set-Cookie" not in resp.headers
    with web.session_transaction(base_url=ROOT) as sess:
        assert sess["realms"]["console"]["expires_at"] < time.time()

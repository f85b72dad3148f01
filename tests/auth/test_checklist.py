"""Checklist items this issue completes, each named by its item (see docs/security.md).

A4 (recommended discovery fields built so far), E3 (no secrets in logs or audit), F4
(sessions), F6 (CSRF and no state change on GET) and F7 (headers), on a frozen clock where
time matters. B6, B9 and B10 are in test_token_lifecycle.py, C1 and C11 in
tests/fhir/test_security_defects.py, F2 in test_passwords.py, F3 in test_throttle.py.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import time_machine
from sqlalchemy import select

from fhirserver.models import AuditLogRow
from smart_auth.hashing import utcnow
from tests.auth.support import (
    COOKIE,
    PASSWORD,
    authorize_params,
    basic_auth,
    build_app,
    csrf_from,
    exchange,
    get_code,
    login,
    make_client,
    make_user,
    new_web_client,
    pkce_pair,
    refresh,
)


def test_A4_discovery_advertises_revocation_and_introspection(client, settings) -> None:
    base = settings.base_url
    for path in ("/.well-known/smart-configuration", "/auth/.well-known/openid-configuration"):
        doc = client.get(path).json
        assert doc["revocation_endpoint"] == f"{base}/auth/revoke"
        assert doc["introspection_endpoint"] == f"{base}/auth/introspect"
        assert "none" in doc["revocation_endpoint_auth_methods_supported"]  # public clients revoke too
        assert "none" not in doc["introspection_endpoint_auth_methods_supported"]
        for key in ("token_endpoint_auth_methods_supported", "response_types_supported"):
            assert doc[key]
    smart = client.get("/.well-known/smart-configuration").json
    assert smart["scopes_supported"] and "management_endpoint" not in smart  # app management: WebMail 2/3


def test_E3_no_password_code_verifier_or_token_in_logs_or_audit(app, db_session, settings, caplog) -> None:
    """The whole token lifecycle at DEBUG: sign-in, code, refresh, introspect, revoke, end-session."""
    caplog.set_level(logging.DEBUG)
    user = make_user(db_session, settings, prefix="zzlogname")
    registered = make_client(db_session, confidential=True)
    username = user.username
    before = set(db_session.execute(select(AuditLogRow.event_id)).scalars())
    db_session.rollback()
    web = new_web_client(app)
    scope = "launch/patient openid fhirUser patient/Patient.rs offline_access"
    code, verifier = get_code(web, settings, registered, username, scope)
    first = exchange(web, registered, code, verifier).json
    second = refresh(web, registered, first["refresh_token"]).json
    web.post("/auth/introspect", data={"token": second["access_token"]}, headers=basic_auth(registered))
    web.post("/auth/revoke", data={"token": second["refresh_token"]}, headers=basic_auth(registered))
    web.post("/auth/end-session", data={"id_token_hint": first["id_token"]}, headers=basic_auth(registered))
    secrets = [username, PASSWORD, code, verifier, registered.secret or "", first["id_token"]]
    for tok in (first, second):
        secrets += [tok["access_token"], tok["access_token"][-32:], tok["refresh_token"]]
    for secret in secrets:
        assert secret not in caplog.text
    db_session.expire_all()
    trail = b"\n".join(
        db_session.execute(select(AuditLogRow.content).where(AuditLogRow.event_id.notin_(before))).scalars()
    )
    db_session.rollback()
    assert b"token-revoke" in trail and b"token-refresh" in trail and b'"logout"' in trail
    for secret in secrets:
        assert secret.encode() not in trail


# -- F4: sessions ----------------------------------------------------------------------------------


def test_F4_a_new_128_bit_session_id_at_sign_in(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    value = web.get_cookie(COOKIE, path="/").value
    assert len(value) >= 43  # 32 random bytes, URL-safe: 256 bits


def test_F4_idle_timeout_and_absolute_lifetime_on_a_frozen_clock(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    idle = timedelta(minutes=settings.session_idle_minutes)
    with time_machine.travel(utcnow(), tick=False) as clock:
        web = new_web_client(app)
        login(web, user.username)
        clock.shift(idle - timedelta(seconds=5))
        assert web.get("/auth/").status_code == 200  # activity keeps it alive...
        clock.shift(idle - timedelta(seconds=5))
        assert web.get("/auth/").status_code == 200
        clock.shift(idle + timedelta(seconds=1))  # ...and idling ends it (HIPAA automatic logoff)
        assert web.get("/auth/").status_code == 302
        busy = new_web_client(app)
        login(busy, user.username)
        step = timedelta(minutes=settings.session_idle_minutes - 1)
        lived = timedelta(0)
        while busy.get("/auth/").status_code == 200:  # busy all day, never idle
            assert lived <= timedelta(hours=settings.session_absolute_hours), "outlived its absolute lifetime"
            clock.shift(step)
            lived += step
        assert lived > timedelta(hours=settings.session_absolute_hours) - step


def test_F4_logout_ends_the_session_on_the_server_and_the_old_cookie_is_dead(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    value = web.get_cookie(COOKIE, path="/").value
    web.post("/auth/logout", data={"csrf_token": csrf_from(web.get("/auth/logout").data)})
    replay = new_web_client(app)
    replay.set_cookie(COOKIE, value, path="/")
    assert replay.get("/auth/").status_code == 302


def test_F4_a_password_change_signs_out_the_other_sessions(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    here, there = new_web_client(app), new_web_client(app)
    login(here, user.username)
    login(there, user.username)
    page = here.get("/auth/password")
    here.post(
        "/auth/password",
        data={
            "csrf_token": csrf_from(page.data),
            "current_password": PASSWORD,
            "new_password": "quiet river stones",
            "confirm_password": "quiet river stones",
        },
    )
    assert here.get("/auth/").status_code == 200 and there.get("/auth/").status_code == 302


# -- F6: CSRF on every form, no state change on GET ------------------------------------------------


def test_F6_every_state_changing_form_needs_its_csrf_token(app, db_session, settings) -> None:
    user = make_user(db_session, settings, role="provider")
    third_party = make_client(db_session, first_party=False)
    web = new_web_client(app)
    assert web.post("/auth/login", data={"username": user.username, "password": PASSWORD}).status_code == 400
    login(web, user.username)
    _, challenge = pkce_pair()
    params = authorize_params(settings, third_party, "launch/patient patient/Patient.rs", challenge)
    web.get("/auth/authorize", query_string=params)
    for path, data in (
        ("/auth/password", {"current_password": PASSWORD, "new_password": "x", "confirm_password": "x"}),
        ("/auth/authorize/patient", {"action": "continue", "patient": "x"}),
        ("/auth/authorize/consent", {"action": "approve", "scope": "patient/Patient.rs"}),
        ("/auth/logout", {}),
    ):
        r = web.post(path, data=data)
        assert r.status_code == 400 and b"This form has expired" in r.data, path
    assert web.get("/auth/").status_code == 200  # nothing changed: still signed in


def test_F6_no_state_change_on_get(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    assert web.get("/auth/logout").status_code == 200
    assert web.get("/auth/").status_code == 200  # a GET of the logout page signs nobody out
    for path in ("/auth/revoke", "/auth/introspect", "/auth/end-session", "/auth/token"):
        assert web.get(path).status_code == 405, path


# -- F7: headers -----------------------------------------------------------------------------------


def test_F7_security_headers_on_every_login_server_page(db_session, settings) -> None:
    https = settings.with_(base_url="https://auth.example")
    web = build_app(https).test_client()
    web.environ_base["REMOTE_ADDR"] = "10.9.9.9"
    pages = [
        web.get("/auth/login", base_url="https://auth.example"),
        web.get("/auth/authorize", base_url="https://auth.example"),  # an error page
        web.get("/auth/logout", base_url="https://auth.example"),
    ]
    for r in pages:
        h = r.headers
        assert h["Strict-Transport-Security"].startswith("max-age=31536000")
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
        assert h["X-Content-Type-Options"] == "nosniff" and h["Referrer-Policy"] == "no-referrer"
        assert "no-store" in h["Cache-Control"]
    token = web.post(
        "/auth/token",
        data={"grant_type": "authorization_code", "code": "x", "client_id": "x"},
        base_url="https://auth.example",
    )
    assert token.headers["Cache-Control"] == "no-store" and token.headers["Pragma"] == "no-cache"

"""The login pages through the Flask test client: forms, CSRF, failures, throttling, first login."""

from __future__ import annotations

import re

from sqlalchemy import select

from fhirserver.models import AuditLogRow
from smart_auth import accounts
from smart_auth.models import UserAccount, WebSession
from tests.auth.support import (
    PASSWORD,
    authorize_params,
    csrf_from,
    exchange,
    get_code,
    login,
    make_client,
    make_user,
    new_web_client,
    pkce_pair,
    query_of,
)
from tests.support import uid


def _strip_csrf(html: bytes) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html.decode())


def test_login_page_is_accessible_and_locked_down(app) -> None:
    web = new_web_client(app)
    r = web.get("/auth/login")
    assert r.status_code == 200
    html = r.data.decode()
    assert "<main" in html and "<h1>Sign in</h1>" in html
    assert '<label for="username">' in html and '<label for="password">' in html
    assert 'autocomplete="current-password"' in html
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "form-action 'self'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "no-store" in r.headers["Cache-Control"]
    css = web.get("/auth/static/auth.css")
    assert css.status_code == 200 and b"font-family" in css.data


def test_login_success_redirects_home_and_signs_in(app, db_session, settings) -> None:
    user = make_user(db_session, settings, role="provider")
    web = new_web_client(app)
    r = login(web, user.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/")
    home = web.get("/auth/")
    assert home.status_code == 200 and b"You are signed in" in home.data


def test_login_post_without_csrf_is_refused(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    web.get("/auth/login")
    r = web.post("/auth/login", data={"username": user.username, "password": PASSWORD})
    assert r.status_code == 400 and b"This form has expired" in r.data
    r = web.post("/auth/login", data={"username": user.username, "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 400
    assert web.get("/auth/").status_code == 302  # still not signed in


def test_unknown_user_and_wrong_password_look_the_same(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    page = web.get("/auth/login")
    token = csrf_from(page.data)
    wrong = web.post("/auth/login", data={"csrf_token": token, "username": user.username, "password": "nope nope"})
    ghost = web.post(
        "/auth/login", data={"csrf_token": token, "username": user.username + "x", "password": "nope nope"}
    )
    assert wrong.status_code == ghost.status_code == 400
    assert b"The username or password is not correct." in wrong.data
    assert _strip_csrf(wrong.data).replace(user.username + "x", user.username) == _strip_csrf(wrong.data)
    assert _strip_csrf(ghost.data).replace(user.username + "x", user.username) == _strip_csrf(wrong.data)
    assert PASSWORD.encode() not in wrong.data


def test_too_many_failures_give_429(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    for _ in range(3):
        assert login(web, user.username, "wrong password").status_code == 400
    assert login(web, user.username, "wrong password").status_code == 400  # now this address must wait
    r = login(web, user.username, PASSWORD)
    assert r.status_code == 429 and b"Too many attempts" in r.data and int(r.headers["Retry-After"]) > 0
    other = new_web_client(app)  # another address is not slowed by this one's failures
    assert login(other, user.username, PASSWORD).status_code == 303


def test_first_login_forces_password_change_then_resumes_authorization(app, db_session, settings) -> None:
    pid = f"p{uid()}"
    creds = accounts.grant_portal_access(db_session, settings, patient_id=pid, first_name="Maya")
    username, otp = creds.username, creds.password
    db_session.commit()
    client_app = make_client(db_session, scope="launch/patient patient/*.rs openid fhirUser")
    web = new_web_client(app)
    verifier, challenge = pkce_pair()
    r = web.get(
        "/auth/authorize", query_string=authorize_params(settings, client_app, "launch/patient patient/*.rs", challenge)
    )
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/login")
    assert "state-123" not in r.headers["Location"]  # the pending request stays on the server
    r = login(web, username, otp)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/password")
    # The authorization cannot be finished before the password is changed.
    assert web.get("/auth/authorize/continue").headers["Location"].endswith("/auth/password")
    page = web.get("/auth/password")
    assert page.status_code == 200 and b"One-time password" in page.data
    token = csrf_from(page.data)
    bad = web.post(
        "/auth/password",
        data={
            "csrf_token": token,
            "current_password": otp,
            "new_password": "password123",
            "confirm_password": "password123",
        },
    )
    assert bad.status_code == 400 and b"too easy to guess" in bad.data
    mismatch = web.post(
        "/auth/password",
        data={
            "csrf_token": token,
            "current_password": otp,
            "new_password": "a calm blue lake",
            "confirm_password": "a calm",
        },
    )
    assert mismatch.status_code == 400 and b"do not match" in mismatch.data
    wrong = web.post(
        "/auth/password",
        data={
            "csrf_token": token,
            "current_password": "not it at all",
            "new_password": "a calm blue lake",
            "confirm_password": "a calm blue lake",
        },
    )
    assert wrong.status_code == 400 and b"current password is not correct" in wrong.data
    ok = web.post(
        "/auth/password",
        data={
            "csrf_token": token,
            "current_password": otp,
            "new_password": "a calm blue lake",
            "confirm_password": "a calm blue lake",
        },
    )
    assert ok.status_code == 303 and ok.headers["Location"].endswith("/auth/authorize/continue")
    r = web.get(ok.headers["Location"])
    assert r.status_code == 302 and r.headers["Location"].startswith(client_app.redirect_uri)
    q = query_of(r.headers["Location"])
    assert q["state"] == "state-123"
    tok = exchange(web, client_app, q["code"], verifier)
    assert tok.status_code == 200 and tok.json["patient"] == pid
    db_session.expire_all()
    user = db_session.execute(select(UserAccount).where(UserAccount.username == username)).scalar_one()
    assert not user.must_change_password
    assert accounts.authenticate(db_session, settings, username, "a calm blue lake", "10.0.0.1") is not None


def test_password_change_ends_other_sessions(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    first, second = new_web_client(app), new_web_client(app)
    login(first, user.username)
    login(second, user.username)
    assert second.get("/auth/").status_code == 200
    page = first.get("/auth/password")
    r = first.post(
        "/auth/password",
        data={
            "csrf_token": csrf_from(page.data),
            "current_password": PASSWORD,
            "new_password": "quiet river stones",
            "confirm_password": "quiet river stones",
        },
    )
    assert r.status_code == 200 and b"password has been changed" in r.data
    assert first.get("/auth/").status_code == 200
    assert second.get("/auth/").status_code == 302  # signed out everywhere else
    db_session.expire_all()
    rows = db_session.execute(select(WebSession).where(WebSession.user_id == user.id)).scalars().all()
    assert len(rows) == 1


def test_logout_confirmation_next_and_audit(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    client_app = make_client(db_session)
    web = new_web_client(app)
    login(web, user.username)
    page = web.get("/auth/logout", query_string={"next": "https://evil.example/steal"})
    assert page.status_code == 200 and b"evil.example" not in page.data
    assert web.get("/auth/").status_code == 200  # GET never signs out
    target = client_app.redirect_uri.rsplit("/", 1)[0] + "/signed-out"
    page = web.get("/auth/logout", query_string={"next": target})
    assert target.encode() in page.data
    assert client_app.redirect_uri.split("/callback")[0] in page.headers["Content-Security-Policy"]
    r = web.post("/auth/logout", data={"csrf_token": csrf_from(page.data), "next": target})
    assert r.status_code == 303 and r.headers["Location"] == target
    assert web.get("/auth/").status_code == 302
    # Relative next works, protocol-relative and unknown origins do not.
    login(web, user.username)
    page = web.get("/auth/logout")
    r = web.post("/auth/logout", data={"csrf_token": csrf_from(page.data), "next": "//evil.example/x"})
    assert r.headers["Location"].endswith("/auth/login?signed_out=1")
    login(web, user.username)
    page = web.get("/auth/logout")
    r = web.post("/auth/logout", data={"csrf_token": csrf_from(page.data), "next": "/portal/"})
    assert r.headers["Location"] == "/portal/"
    events = db_session.execute(select(AuditLogRow.content)).scalars()
    assert any(b'"code":"logout"' in e and user.id.encode() in e for e in events)


def test_logout_requires_csrf(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    assert web.post("/auth/logout").status_code == 400
    assert web.get("/auth/").status_code == 200


def test_authorize_code_flow_helper_smoke(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    client_app = make_client(db_session)
    web = new_web_client(app)
    code, verifier = get_code(web, settings, client_app, user.username, "launch/patient patient/*.rs")
    assert exchange(web, client_app, code, verifier).status_code == 200

"""Server-side login sessions: cookie flags, no cookie on the API, new id on login, expiry, logout."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from smart_auth.hashing import sha256_hex, utcnow
from smart_auth.models import WebSession
from smart_auth.sessions import PRE_COOKIE_NAME as PRE_COOKIE
from tests.auth.support import COOKIE, build_app, csrf_from, login, make_user, new_web_client


def _cookie(web):
    c = web.get_cookie(COOKIE, path="/")
    return c.value if c is not None else None


def _row(db_session, value):
    """The session row as a dict (or None); ends the read transaction (SQLite: it holds the lock)."""
    db_session.expire_all()
    row = db_session.execute(select(WebSession).where(WebSession.id_hash == sha256_hex(value))).scalar_one_or_none()
    out = None if row is None else {c: getattr(row, c) for c in ("id_hash", "data", "user_id", "last_seen_at")}
    db_session.rollback()
    return out


def _set_cookie(response, name):
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(name + "="))


def test_cookie_flags_and_only_a_hash_in_the_table(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    pre = _set_cookie(web.get("/auth/login"), PRE_COOKIE)
    r = login(web, user.username)
    header = _set_cookie(r, COOKIE)
    for flag in ("HttpOnly", "Path=/", "SameSite=Lax"):
        assert flag in header and flag in pre
    assert "Secure" not in header  # base_url is http in tests (see the https test below)
    value = _cookie(web)
    assert len(value) >= 43  # 256 bits, URL-safe base64
    row = _row(db_session, value)
    assert row is not None and row["id_hash"] != value and value not in row["data"]


def test_no_session_or_cookie_for_the_api_and_discovery(app, db_session) -> None:
    web = new_web_client(app)
    count = len(db_session.execute(select(WebSession.id_hash)).all())
    db_session.rollback()
    for path in ("/fhir/metadata", "/.well-known/smart-configuration", "/auth/jwks", "/fhir/Patient"):
        r = web.get(path)
        assert "Set-Cookie" not in r.headers, path
    r = web.post("/auth/token", data={"grant_type": "authorization_code", "code": "x", "client_id": "nobody"})
    assert "Set-Cookie" not in r.headers
    db_session.expire_all()
    assert len(db_session.execute(select(WebSession.id_hash)).all()) == count


def test_login_issues_a_new_session_id(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    web.get("/auth/login")
    before = web.get_cookie(PRE_COOKIE, path="/").value  # the anonymous session, sealed
    login(web, user.username)
    after = _cookie(web)
    assert before and after and before != after
    assert web.get_cookie(PRE_COOKIE, path="/") is None
    assert _row(db_session, before) is None
    row = _row(db_session, after)
    assert row is not None and row["user_id"] == user.id


def test_a_planted_session_cookie_is_not_adopted_at_login(app, db_session, settings) -> None:
    """Session fixation: a cookie value chosen by someone else never becomes a signed-in session."""
    user = make_user(db_session, settings)
    web = new_web_client(app)
    planted = "x" * 43
    web.set_cookie(COOKIE, planted, path="/")
    login(web, user.username)
    assert _cookie(web) != planted and _row(db_session, planted) is None


def test_anonymous_pages_write_no_session_rows(app, db_session, settings) -> None:
    """Defect 9: twenty anonymous GETs of the login and authorize pages leave no row behind."""
    from tests.auth.support import authorize_params, make_client, pkce_pair

    registered = make_client(db_session)
    count = len(db_session.execute(select(WebSession.id_hash)).all())
    db_session.rollback()
    params = authorize_params(settings, registered, "launch/patient patient/*.rs", pkce_pair()[1])
    for n in range(10):
        new_web_client(app).get("/auth/login")
        r = new_web_client(app).get("/auth/authorize", query_string=params)
        assert r.status_code in (302, 303), n
    db_session.expire_all()
    assert len(db_session.execute(select(WebSession.id_hash)).all()) == count


def test_the_pending_request_rides_in_a_sealed_cookie_until_sign_in(app, db_session, settings) -> None:
    from tests.auth.support import authorize_params, make_client, pkce_pair

    user = make_user(db_session, settings)
    registered = make_client(db_session)
    web = new_web_client(app)
    params = authorize_params(
        settings, registered, "launch/patient patient/*.rs", pkce_pair()[1], state="visible-state-value"
    )
    web.get("/auth/authorize", query_string=params)
    sealed = web.get_cookie(PRE_COOKIE, path="/").value
    for secret in ("visible-state-value", registered.client_id, registered.redirect_uri):
        assert secret not in sealed  # encrypted, not merely signed
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    other = new_web_client(app)
    other.set_cookie(PRE_COOKIE, tampered, path="/")
    assert b"No sign-in in progress" in other.get("/auth/authorize/continue").data
    r = login(web, user.username)
    assert r.headers["Location"].endswith("/auth/authorize/continue")
    assert any(h.startswith(PRE_COOKIE + "=;") for h in r.headers.getlist("Set-Cookie"))  # deleted at sign-in


def test_idle_expiry_signs_out(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    assert web.get("/auth/").status_code == 200
    value = _cookie(web)
    idle = timedelta(minutes=settings.session_idle_minutes, seconds=5)
    db_session.execute(
        update(WebSession).where(WebSession.id_hash == sha256_hex(value)).values(last_seen_at=utcnow() - idle)
    )
    db_session.commit()
    r = web.get("/auth/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/login")
    assert _row(db_session, value) is None
    page = web.get("/auth/login")
    assert b"Your session ended" in page.data


def test_activity_keeps_the_session_alive(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    value = _cookie(web)
    almost = timedelta(minutes=settings.session_idle_minutes - 1)
    db_session.execute(
        update(WebSession).where(WebSession.id_hash == sha256_hex(value)).values(last_seen_at=utcnow() - almost)
    )
    db_session.commit()
    assert web.get("/auth/").status_code == 200
    row = _row(db_session, value)
    assert utcnow() - row["last_seen_at"].replace(tzinfo=utcnow().tzinfo) < timedelta(minutes=1)


def test_absolute_lifetime(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    value = _cookie(web)
    db_session.execute(
        update(WebSession)
        .where(WebSession.id_hash == sha256_hex(value))
        .values(created_at=utcnow() - timedelta(hours=settings.session_absolute_hours, minutes=1))
    )
    db_session.commit()
    assert web.get("/auth/").status_code == 302


def test_logout_deletes_the_server_session_and_the_old_cookie_is_worthless(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    web = new_web_client(app)
    login(web, user.username)
    value = _cookie(web)
    page = web.get("/auth/logout")
    r = web.post("/auth/logout", data={"csrf_token": csrf_from(page.data)})
    assert r.status_code == 303
    assert _row(db_session, value) is None
    replay = new_web_client(app)
    replay.set_cookie(COOKIE, value, path="/")
    assert replay.get("/auth/").status_code == 302


def test_secure_cookie_and_hsts_on_https(settings) -> None:
    https = settings.with_(base_url="https://auth.example")
    secure_app = build_app(https)
    web = secure_app.test_client()
    r = web.get("/auth/login", base_url="https://auth.example")
    assert "Secure" in r.headers["Set-Cookie"]
    assert r.headers["Strict-Transport-Security"].startswith("max-age=31536000")

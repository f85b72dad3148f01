"""TOTP two-step sign-in (F3), re-authentication before changing it (F4), and its audit (E2).

Through the Flask test client and the real pages; clocks are frozen with time-machine,
so that "the same 30-second step" and "one step of drift" are exact. Secrets are known to
the test either from the factories (tests/totp.py) or from the enrolment page itself.
"""

from __future__ import annotations

import base64
import logging
import re

import pyotp
import pytest
import time_machine
from click.testing import CliRunner
from sqlalchemy import select, text

from fhirserver.db import Base
from fhirserver.models import AuditLogRow
from smart_auth import mfa
from smart_auth.models import MfaRecoveryCode, UserMfa, WebSession
from tests import totp
from tests.auth.support import PASSWORD, answer_mfa, build_app, csrf_from, make_user, new_web_client
from tests.support import test_env

T0 = 1_900_000_020  # the start of a 30-second step
SECRET_OF_PAGE = re.compile(r'id="mfa-secret">([A-Z2-7 ]+)<')


def new_user(db_session, settings, **kwargs):
    """make_user, detached: reading its attributes later never opens a transaction (on SQLite
    an open one would block the app's writes)."""
    user = make_user(db_session, settings, **kwargs)
    db_session.expunge(user)
    return user


def password_step(web, username: str, password: str = PASSWORD):
    page = web.get("/auth/login")
    form = {"csrf_token": csrf_from(page.data), "username": username, "password": password}
    return web.post("/auth/login", data=form)


def give_code(web, code: str):
    return answer_mfa(web, "", code)


def code_at(secret: str, instant: float) -> str:
    return pyotp.TOTP(secret).at(instant)


def signed_in(web) -> bool:
    r = web.get("/auth/")
    return r.status_code == 200 and "You are signed in" in r.data.decode()


def set_cookies(response) -> str:
    return " ".join(response.headers.getlist("Set-Cookie"))


def audit_events(db_session, user_id: str) -> list[bytes]:
    db_session.expire_all()
    rows = db_session.execute(select(AuditLogRow.content)).scalars()
    out = [e for e in rows if e and user_id.encode() in e]
    db_session.rollback()
    return out


def codes_left(db_session, user_id: str) -> int:
    """Read, then end the transaction (SQLite: a reader's open transaction blocks the app's writes)."""
    db_session.expire_all()
    try:
        return mfa.recovery_codes_left(db_session, user_id)
    finally:
        db_session.rollback()


def log_out(web) -> None:
    page = web.get("/auth/logout")
    web.post("/auth/logout", data={"csrf_token": csrf_from(page.data)})


@pytest.mark.parametrize("role", ["provider", "staff"])
def test_F3_mfa_required_for_providers_and_staff(app, db_session, settings, role) -> None:
    assert settings.mfa_required  # the default
    user = new_user(db_session, settings, role=role, staff_of=())
    web = new_web_client(app)
    r = password_step(web, user.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/mfa")
    # Not signed in yet: no server-side session, no device cookie, the home page sends to login.
    assert "fhir_auth_session=" not in set_cookies(r) and "fhir_auth_device" not in set_cookies(r)
    assert not signed_in(web)
    page = web.get("/auth/mfa")
    assert page.status_code == 200 and 'autocomplete="one-time-code"' in page.data.decode()
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    r = answer_mfa(web, user.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/")
    assert "fhir_auth_session=" in set_cookies(r) and "fhir_auth_device" in set_cookies(r)
    assert signed_in(web)
    db_session.expire_all()
    row = db_session.execute(select(WebSession).where(WebSession.user_id == user.id)).scalar_one()
    assert row.login_id  # a sign-in like a password-only one: new session id, login id


def test_F3_mfa_form_needs_its_csrf_token(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="provider")
    web = new_web_client(app)
    password_step(web, user.username)
    r = web.post("/auth/mfa", data={"code": totp.code_for(user.username)})
    assert r.status_code == 400 and not signed_in(web)


def test_F3_single_use_code_replay_is_refused(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="provider", enrol_mfa=False)
    secret = pyotp.random_base32()
    mfa.enrol_with_secret(db_session, settings, user, secret)
    db_session.commit()
    with time_machine.travel(T0 + 5, tick=False):
        web = new_web_client(app)
        password_step(web, user.username)
        assert give_code(web, code_at(secret, T0)).status_code == 303
        log_out(web)
        password_step(web, user.username)
        replay = give_code(web, code_at(secret, T0))
        assert replay.status_code == 400 and "used already" in replay.data.decode()
        assert not signed_in(web)
        assert give_code(web, code_at(secret, T0 - 30)).status_code == 400  # older steps too
        assert give_code(web, code_at(secret, T0 + 30)).status_code == 303  # the next step's code, once


@pytest.mark.parametrize(("offset", "accepted"), [(-30, True), (30, True), (-60, False), (60, False)])
def test_F3_clock_drift_of_one_step_is_accepted(app, db_session, settings, offset, accepted) -> None:
    user = new_user(db_session, settings, role="provider", enrol_mfa=False)
    secret = pyotp.random_base32()
    mfa.enrol_with_secret(db_session, settings, user, secret)
    db_session.commit()
    with time_machine.travel(T0 + 10, tick=False):
        web = new_web_client(app)
        password_step(web, user.username)
        r = give_code(web, code_at(secret, T0 + offset))
        assert (r.status_code == 303) is accepted
        assert signed_in(web) is accepted


def test_F3_wrong_codes_are_throttled_and_a_new_password_does_not_reset_the_count(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="provider", enrol_mfa=False)
    secret = pyotp.random_base32()
    mfa.enrol_with_secret(db_session, settings, user, secret)
    db_session.commit()
    wrong = f"{(int(code_at(secret, T0)) + 1) % 1_000_000:06d}"
    with time_machine.travel(T0, tick=False) as clock:
        web = new_web_client(app)
        password_step(web, user.username)
        for _ in range(4):  # three free failures, the fourth makes this address wait
            assert give_code(web, wrong).status_code == 400
        again = password_step(web, user.username)  # the password again: still waiting for codes
        assert again.status_code == 303
        r = give_code(web, code_at(secret, T0))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert not signed_in(web)
        clock.shift(3)
        assert give_code(web, code_at(secret, T0)).status_code == 303
    events = audit_events(db_session, user.id)
    assert sum(b'"code":"mfa"' in e and b"second factor failed" in e for e in events) == 4
    assert any(b"too many failed attempts" in e for e in events)


def test_F3_recovery_code_works_once(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="staff", enrol_mfa=False)
    codes = mfa.enrol_with_secret(db_session, settings, user, pyotp.random_base32())
    db_session.commit()
    assert len(codes) == 10 and len(set(codes)) == 10
    web = new_web_client(app)
    password_step(web, user.username)
    assert give_code(web, codes[3].lower()).status_code == 303  # typed in lower case, with dashes
    log_out(web)
    password_step(web, user.username)
    assert give_code(web, codes[3]).status_code == 400
    assert codes_left(db_session, user.id) == 9
    events = audit_events(db_session, user.id)
    assert any(b"recovery code; 9 left" in e for e in events)
    assert not any(c.encode() in e or c.replace("-", "").encode() in e for c in codes for e in events)


def test_F3_enrolment_only_after_password_and_secret_encrypted_at_rest(app, db_session, settings, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    user = new_user(db_session, settings, role="provider", enrol_mfa=False)
    web = new_web_client(app)
    # No password yet: no enrolment page.
    r = web.get("/auth/mfa/enrol")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/login")
    assert password_step(web, user.username).headers["Location"].endswith("/auth/mfa")
    r = web.get("/auth/mfa")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/mfa/enrol")
    page = web.get("/auth/mfa/enrol")
    html = page.data.decode()
    assert page.status_code == 200 and "<svg" in html
    secret = SECRET_OF_PAGE.search(html).group(1).replace(" ", "")
    assert len(secret) == 32
    # The otpauth:// URI is drawn as an inline SVG: it is in no link, image source or header.
    assert "otpauth://" not in html and secret not in str(page.headers)
    assert web.get("/auth/mfa/enrol").data.decode().count(SECRET_OF_PAGE.search(html).group(1)) == 1  # same secret
    assert not signed_in(web)
    wrong = web.post("/auth/mfa/enrol", data={"csrf_token": csrf_from(html), "code": "000000"})
    assert wrong.status_code == 400 and not signed_in(web)
    totp.remember(user.username, secret)
    done = web.post("/auth/mfa/enrol", data={"csrf_token": csrf_from(html), "code": totp.code_for(user.username)})
    assert done.status_code == 200 and "fhir_auth_session=" in set_cookies(done)
    shown = re.findall(r"<li><code>([A-Z2-9-]{19})</code></li>", done.data.decode())
    assert len(shown) == 10
    assert signed_in(web)
    assert secret not in set_cookies(done)

    # At rest: the base32 secret (nor its raw bytes) is in no row of any table.
    db_session.expire_all()
    raw = base64.b32decode(secret)
    conn = db_session.connection()
    for table in Base.metadata.sorted_tables:
        for row in conn.execute(text(f"SELECT * FROM {table.name}")):  # our own table names
            for value in row:
                blob = value if isinstance(value, bytes) else str(value).encode()
                assert secret.encode() not in blob and raw not in blob, table.name
                assert not any(c.encode() in blob for c in shown), table.name
    stored = db_session.get(UserMfa, user.id)
    assert stored.key_id == settings.active_key_id and stored.secret_envelope
    hashes = db_session.execute(select(MfaRecoveryCode.code_hash).where(MfaRecoveryCode.user_id == user.id)).all()
    assert len(hashes) == 10
    db_session.rollback()
    assert secret not in caplog.text and not any(c in caplog.text for c in shown)
    events = audit_events(db_session, user.id)
    assert any(b'"code":"mfa-enrol"' in e and b"authenticator enrolled" in e for e in events)

    # Enrolled: the password alone can no longer reach the enrolment page (nor replace the phone).
    log_out(web)
    password_step(web, user.username)
    r = web.get("/auth/mfa/enrol")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/mfa")
    assert answer_mfa(web, user.username).status_code == 303


def test_F4_reauthentication_before_changing_mfa(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="provider")
    old_secret = totp.SECRETS[user.username]
    web = new_web_client(app)
    password_step(web, user.username)
    answer_mfa(web, user.username)
    assert signed_in(web)
    # Signed in is not enough: the enrolment page and new recovery codes ask for the password first.
    r = web.get("/auth/mfa/enrol")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/security")
    page = web.get("/auth/security")
    html = page.data.decode()
    assert page.status_code == 200 and 'name="password"' in html and "Recovery codes left: <strong>10</strong>" in html
    r = web.post("/auth/security", data={"csrf_token": csrf_from(html), "action": "recovery-codes"})
    assert r.status_code == 400 and codes_left(db_session, user.id) == 10
    r = web.post("/auth/security", data={"csrf_token": csrf_from(html), "action": "reauth", "password": "not it"})
    assert r.status_code == 400
    r = web.post("/auth/security", data={"csrf_token": csrf_from(html), "action": "reauth", "password": PASSWORD})
    assert r.status_code == 303
    page = web.get("/auth/mfa/enrol")
    assert page.status_code == 200
    new_secret = SECRET_OF_PAGE.search(page.data.decode()).group(1).replace(" ", "")
    assert new_secret != old_secret
    totp.remember(user.username, new_secret)
    r = web.post("/auth/mfa/enrol", data={"csrf_token": csrf_from(page.data), "code": totp.code_for(user.username)})
    assert r.status_code == 200 and "Your recovery codes" in r.data.decode()
    # One re-authentication, one change.
    r = web.get("/auth/mfa/enrol")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/security")
    events = audit_events(db_session, user.id)
    assert any(b'"code":"reauthentication"' in e and b'"outcome":"4"' in e for e in events)
    assert any(b"authenticator replaced" in e for e in events)
    # The old phone's codes no longer work.
    log_out(web)
    password_step(web, user.username)
    assert give_code(web, pyotp.TOTP(old_secret).now()).status_code == 400


def test_F4_new_recovery_codes_after_reauthentication(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="staff", enrol_mfa=False)
    old = mfa.enrol_with_secret(db_session, settings, user, pyotp.random_base32())
    db_session.commit()
    web = new_web_client(app)
    password_step(web, user.username)
    give_code(web, old[0])
    html = web.get("/auth/security").data.decode()
    web.post("/auth/security", data={"csrf_token": csrf_from(html), "action": "reauth", "password": PASSWORD})
    html = web.get("/auth/security").data.decode()
    assert "Make new recovery codes" in html
    r = web.post("/auth/security", data={"csrf_token": csrf_from(html), "action": "recovery-codes"})
    new = re.findall(r"<li><code>([A-Z2-9-]{19})</code></li>", r.data.decode())
    assert r.status_code == 200 and len(new) == 10 and not set(new) & set(old)
    log_out(web)
    password_step(web, user.username)
    assert give_code(web, old[1]).status_code == 400
    assert give_code(web, new[0]).status_code == 303


def test_F3_reset_mfa_cli_is_audited(app, db_session, settings, database_url, server_port, tmp_path) -> None:
    from fhirserver.cli import main

    user = new_user(db_session, settings, role="provider")
    web = new_web_client(app)
    password_step(web, user.username)
    answer_mfa(web, user.username)
    assert signed_in(web)
    env = test_env(tmp_path, database_url, server_port, SECRET_KEY=settings.secret_key)
    result = CliRunner().invoke(main, ["user", "reset-mfa", "--username", user.username], env=env)
    assert result.exit_code == 0, result.output
    assert "reset two-step sign-in" in result.output
    db_session.expire_all()
    assert db_session.get(UserMfa, user.id) is None
    assert codes_left(db_session, user.id) == 0
    db_session.rollback()
    assert not signed_in(web)  # the sessions ended with the reset
    events = audit_events(db_session, user.id)
    assert any(b'"code":"user-admin"' in e and b"two-step sign-in reset" in e for e in events)
    assert not any(totp.SECRETS[user.username].encode() in e for e in events)
    # The next sign-in sets up a new authenticator.
    password_step(web, user.username)
    r = web.get("/auth/mfa")
    assert r.status_code == 302 and r.headers["Location"].endswith("/auth/mfa/enrol")
    unknown = CliRunner().invoke(main, ["user", "reset-mfa", "--username", "nobody-here"], env=env)
    assert unknown.exit_code != 0 and "no such user" in unknown.output and "Traceback" not in unknown.output


def test_F3_mfa_off_means_password_only(db_session, settings) -> None:
    off = build_app(settings.with_(mfa_required=False))
    plain = new_user(db_session, settings, role="provider", enrol_mfa=False)
    chosen = new_user(db_session, settings, role="provider")
    web = new_web_client(off)
    r = password_step(web, plain.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/")
    assert "fhir_auth_session=" in set_cookies(r)
    # Whoever set up an authenticator is still asked for it.
    web = new_web_client(off)
    assert password_step(web, chosen.username).headers["Location"].endswith("/auth/mfa")


def test_F3_patients_are_never_asked(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="patient")
    web = new_web_client(app)
    r = password_step(web, user.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/")
    assert signed_in(web)
    assert web.get("/auth/mfa/enrol").status_code == 404
    assert "not used for this account" in web.get("/auth/security").data.decode()
    assert not mfa.needed_at_login(db_session, settings, user)


def test_F3_admins_may_choose_mfa(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="admin")
    web = new_web_client(app)
    assert password_step(web, user.username).headers["Location"].endswith("/auth/")  # not required
    assert "Two-step sign-in is off" in web.get("/auth/security").data.decode()
    totp.enrol(db_session, settings, user)
    db_session.commit()
    log_out(web)
    assert password_step(web, user.username).headers["Location"].endswith("/auth/mfa")
    assert answer_mfa(web, user.username).status_code == 303


def test_F3_the_password_step_expires(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="provider")
    with time_machine.travel(T0, tick=False) as clock:
        web = new_web_client(app)
        password_step(web, user.username)
        clock.shift(mfa.PENDING_SECONDS + 1)
        r = web.get("/auth/mfa")
        assert r.status_code == 302 and r.headers["Location"].endswith("/auth/login")


def test_E2_mfa_events_are_audited_without_codes(app, db_session, settings) -> None:
    user = new_user(db_session, settings, role="provider")
    web = new_web_client(app)
    password_step(web, user.username)
    give_code(web, "123-456x")
    code = totp.code_for(user.username)
    give_code(web, code)
    events = audit_events(db_session, user.id)
    assert any(b'"code":"mfa"' in e and b'"outcome":"4"' in e for e in events)
    assert any(b'"code":"mfa"' in e and b'"outcome":"0"' in e and b"authenticator code" in e for e in events)
    assert not any(code.encode() in e or user.username.encode() in e for e in events)

"""Defect 3 (lockout as a weapon) and F3: throttling slows guessing, never locks the real user out.

Every test runs on a frozen clock (time-machine), so delays and windows are exact.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine

from smart_auth import accounts, device_cookies, throttle
from smart_auth.accounts import LoginThrottled
from tests.auth.support import PASSWORD, csrf_from, login, make_user, new_web_client, random_address
from tests.support import uid

T0 = datetime(2031, 3, 4, 9, 0, tzinfo=UTC)


def _fail(db_session, settings, username, address, device=None, times=1) -> None:
    for _ in range(times):
        assert accounts.authenticate(db_session, settings, username, "not the password", address, device) is None
    db_session.commit()


def _refused(db_session, settings, username, password, address, device=None) -> int:
    with pytest.raises(LoginThrottled) as exc:
        accounts.authenticate(db_session, settings, username, password, address, device)
    db_session.rollback()
    return exc.value.retry_after


def test_F3_others_failures_never_lock_out_the_right_password(db_session, settings) -> None:
    """The skeleton locked an account for 15 minutes after five wrong passwords from anyone."""
    user = make_user(db_session, settings)
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(3):  # three attackers, five failures each (waiting out their delays)
            attacker = random_address()
            for _ in range(5):
                _fail(db_session, settings, user.username, attacker)
                clock.shift(30)
        ok = accounts.authenticate(db_session, settings, user.username, PASSWORD, random_address())
        assert ok is not None and ok.id == user.id


def test_F3_past_the_account_limit_only_devices_in_good_standing_get_in(db_session, settings) -> None:
    user = make_user(db_session, settings)
    strict = settings.with_(login_max_failures_account=6)
    device = "nonce-of-the-users-own-browser"
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(3):
            _fail(db_session, strict, user.username, random_address(), times=2)
        # A new device is refused for the rest of the window; the user's own browser is not.
        assert _refused(db_session, strict, user.username, PASSWORD, random_address()) > 0
        assert accounts.authenticate(db_session, strict, user.username, PASSWORD, random_address(), device)
        db_session.commit()
        clock.shift(strict.login_window_seconds)
        assert accounts.authenticate(db_session, strict, user.username, PASSWORD, random_address())


def test_defect3_per_pair_delays_grow_and_slow_that_address_only(db_session, settings) -> None:
    user = make_user(db_session, settings)
    there, elsewhere = random_address(), random_address()
    with time_machine.travel(T0, tick=False) as clock:
        _fail(db_session, settings, user.username, there, times=throttle.PAIR_FREE)
        _fail(db_session, settings, user.username, there)  # the first one past the free ones
        assert _refused(db_session, settings, user.username, PASSWORD, there) == 2  # even the right password
        assert accounts.authenticate(db_session, settings, user.username, PASSWORD, elsewhere)  # others: no wait
        db_session.commit()
        waits = []
        for _ in range(4):
            clock.shift(_refused(db_session, settings, user.username, "x", there))
            _fail(db_session, settings, user.username, there)
            waits.append(_refused(db_session, settings, user.username, PASSWORD, there))
        assert waits == [4, 8, 16, 32]
        clock.shift(32)
        assert accounts.authenticate(db_session, settings, user.username, PASSWORD, there)
        db_session.commit()
        # Success clears the pair: the next mistake is free again.
        _fail(db_session, settings, user.username, there)
        assert accounts.authenticate(db_session, settings, user.username, PASSWORD, there)
        db_session.commit()


def test_defect3_many_failures_from_one_address_slow_it_but_lock_no_account(db_session, settings) -> None:
    """The skeleton locked every account after twenty failures from one address."""
    strict = settings.with_(login_max_failures_address=5)
    user = make_user(db_session, strict)
    noisy = random_address()
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(6):
            _fail(db_session, strict, f"ghost{uid()}", noisy)
        assert _refused(db_session, strict, user.username, PASSWORD, noisy) == 1  # slowed, for a second
        assert accounts.authenticate(db_session, strict, user.username, PASSWORD, random_address())
        db_session.commit()
        clock.shift(1)
        assert accounts.authenticate(db_session, strict, user.username, PASSWORD, noisy)
        db_session.commit()


def test_a_device_cookie_loses_its_standing_after_its_own_failures(db_session, settings) -> None:
    user = make_user(db_session, settings)
    nonce = f"stolen-{uid()}"
    with time_machine.travel(T0, tick=False):
        assert throttle.device_in_good_standing(db_session, settings, nonce)
        _fail(db_session, settings, user.username, random_address(), device=nonce, times=throttle.DEVICE_MAX_FAILURES)
        assert not throttle.device_in_good_standing(db_session, settings, nonce)


def test_unknown_usernames_are_throttled_exactly_like_real_ones(db_session, settings) -> None:
    user, ghost = make_user(db_session, settings), f"ghost{uid()}"
    address = random_address()
    with time_machine.travel(T0, tick=False):
        waits = []
        for name in (user.username, ghost):
            _fail(db_session, settings, name, address, times=throttle.PAIR_FREE + 1)
            waits.append(_refused(db_session, settings, name, "x", address))
        assert waits[0] == waits[1] == 2


def test_login_page_429_with_retry_after_and_the_same_page_for_unknown_users(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    pages = []
    for name in (user.username, f"ghost{uid()}"):
        web = new_web_client(app)
        with time_machine.travel(T0, tick=False):
            for _ in range(throttle.PAIR_FREE + 1):
                assert login(web, name, "not the password").status_code == 400
            r = login(web, name, PASSWORD)
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        pages.append(r.data.replace(name.encode(), b"NAME"))
    strip = [p.split(b'name="csrf_token"')[0] for p in pages]
    assert strip[0] == strip[1]


def test_a_successful_sign_in_leaves_a_device_cookie_that_keeps_the_user_in(app, db_session, settings) -> None:
    """OWASP device cookies over HTTP: an attacker past the account limit does not stop the user."""
    user = make_user(db_session, settings)
    mine = new_web_client(app)
    r = login(mine, user.username)
    header = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith(device_cookies.COOKIE_NAME + "="))
    assert "HttpOnly" in header and "Path=/" in header and user.username not in header
    mine.post("/auth/logout", data={"csrf_token": csrf_from(mine.get("/auth/logout").data)})
    for _ in range(settings.login_max_failures_account):
        login(new_web_client(app), user.username, "not the password")
    assert login(new_web_client(app), user.username).status_code == 429  # a new device must wait
    assert login(mine, user.username).status_code == 303  # the user's own browser gets in


def test_a_forged_device_cookie_is_worthless(app, db_session, settings) -> None:
    user = make_user(db_session, settings)
    value = device_cookies.issue([], user.username, "not the server's secret")
    assert device_cookies.read(value, settings.secret_key) == []
    good = device_cookies.issue([], user.username, settings.secret_key)
    assert device_cookies.nonce_for(device_cookies.read(good, settings.secret_key), user.username)
    assert device_cookies.nonce_for(device_cookies.read(good, settings.secret_key), "someone-else") is None
    assert device_cookies.read(good[:-3] + "abc", settings.secret_key) == []


def test_trusted_proxy_hops_decide_the_client_address(db_session, settings) -> None:
    """Behind a TLS proxy every request comes from the proxy; X-Forwarded-For says who it is for,
    and counts only when TRUSTED_PROXY_HOPS says a proxy is there (else anyone could forge it)."""
    from tests.auth.support import build_app

    user = make_user(db_session, settings)
    for hops, separate in ((1, True), (0, False)):
        web = build_app(settings.with_(trusted_proxy_hops=hops)).test_client()
        web.environ_base["REMOTE_ADDR"] = random_address()  # the proxy
        attacker = {"X-Forwarded-For": random_address()}
        with time_machine.travel(T0, tick=False):
            for _ in range(throttle.PAIR_FREE + 1):
                page = web.get("/auth/login", headers=attacker)
                web.post(
                    "/auth/login",
                    headers=attacker,
                    data={"csrf_token": csrf_from(page.data), "username": user.username, "password": "nope"},
                )
            page = web.get("/auth/login", headers={"X-Forwarded-For": random_address()})
            r = web.post(
                "/auth/login",
                headers={"X-Forwarded-For": random_address()},
                data={"csrf_token": csrf_from(page.data), "username": user.username, "password": PASSWORD},
            )
        assert (r.status_code == 303) is separate, (hops, r.status_code)

"""Defect 9: nothing of the login server grows without bound; the beat purge keeps what matters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import time_machine
from sqlalchemy import select

from smart_auth import codes, grants, housekeeping, launch, refresh_tokens, throttle
from smart_auth.hashing import sha256_hex, utcnow
from smart_auth.models import AssertionJti, AuthorizationCode, LoginThrottle, OAuthGrant, RefreshToken, WebSession
from tests.auth.support import make_user
from tests.support import uid


def _session(db_session: Any, *, user_id: str, age: timedelta, idle: timedelta) -> str:
    key = sha256_hex(uid())
    now = utcnow()
    db_session.add(WebSession(id_hash=key, data="{}", user_id=user_id, created_at=now - age, last_seen_at=now - idle))
    return key


def _code(db_session: Any, user_id: str, *, expired_for: timedelta, grant_id: str | None) -> str:
    key = sha256_hex(uid())
    db_session.add(
        AuthorizationCode(
            code_hash=key,
            client_id="c",
            user_id=user_id,
            redirect_uri="https://x.example/cb",
            scope="openid",
            code_challenge="x" * 43,
            code_challenge_method="S256",
            auth_time=0,
            expires_at=utcnow() - expired_for,
            used=grant_id is not None,
            grant_id=grant_id,
        )
    )
    return key


def test_purge_deletes_what_is_dead_and_keeps_what_is_alive(db_session, settings) -> None:
    user = make_user(db_session, settings)
    idle = timedelta(minutes=settings.session_idle_minutes)
    live_session = _session(db_session, user_id=user.id, age=timedelta(minutes=1), idle=timedelta(minutes=1))
    idle_session = _session(db_session, user_id=user.id, age=timedelta(hours=1), idle=idle + timedelta(minutes=1))
    old_session = _session(
        db_session, user_id=user.id, age=timedelta(hours=settings.session_absolute_hours + 1), idle=timedelta(minutes=1)
    )
    with time_machine.travel(utcnow() - timedelta(days=2), tick=False):
        dead_grant = grants.create(db_session, user_id=user.id, client_id="c", scope="openid", login_id=None)
        kept_by_refresh = grants.create(
            db_session, user_id=user.id, client_id="c", scope="offline_access", login_id=None
        )
        revoked_long_ago = grants.create(db_session, user_id=user.id, client_id="c", scope="openid", login_id=None)
        grants.revoke(db_session, revoked_long_ago.id, "revoked")
    fresh_grant = grants.create(db_session, user_id=user.id, client_id="c", scope="openid", login_id=None)
    live_refresh = refresh_tokens.create(
        db_session,
        refresh_tokens.RefreshGrant(
            grant_id=kept_by_refresh.id,
            client_id="c",
            user_id=user.id,
            scope="offline_access",
            launch_patient=None,
            expires_at=utcnow() + timedelta(days=30),
        ),
    )
    dead_refresh = refresh_tokens.create(
        db_session,
        refresh_tokens.RefreshGrant(
            grant_id=fresh_grant.id,
            client_id="c",
            user_id=user.id,
            scope="offline_access",
            launch_patient=None,
            expires_at=utcnow() - timedelta(seconds=1),
        ),
    )
    unredeemed = _code(db_session, user.id, expired_for=timedelta(hours=2), grant_id=None)
    redeemed_live_grant = _code(db_session, user.id, expired_for=timedelta(hours=2), grant_id=fresh_grant.id)
    redeemed_gone_grant = _code(db_session, user.id, expired_for=timedelta(hours=2), grant_id=dead_grant.id)
    recent_code = _code(db_session, user.id, expired_for=timedelta(minutes=1), grant_id=None)
    with time_machine.travel(utcnow() - timedelta(hours=1), tick=False):  # an EHR launch id, long expired
        launch.create(db_session, launch.NewLaunch(user_id=user.id, login_id="l", client_id="c", patient_id="p"))
    name = f"user{uid()}"
    with time_machine.travel(utcnow() - timedelta(days=1), tick=False):
        throttle.record_failure(db_session, settings, throttle.Attempt(f"old{name}", "10.1.1.1"))
    throttle.record_failure(db_session, settings, throttle.Attempt(name, "10.1.1.2"))
    # Backend-service assertion jtis: one past its exp (replay impossible), one still live.
    dead_jti, live_jti = sha256_hex(uid()), sha256_hex(uid())
    db_session.add(AssertionJti(client_id="c", jti_hash=dead_jti, expires_at=utcnow() - timedelta(seconds=1)))
    db_session.add(AssertionJti(client_id="c", jti_hash=live_jti, expires_at=utcnow() + timedelta(minutes=4)))
    db_session.commit()

    counts = housekeeping.purge(db_session, settings)
    db_session.commit()
    assert {"sessions", "refresh_tokens", "grants", "codes", "throttle", "launches", "assertion_jtis"} <= set(counts)
    assert all(v >= 1 for v in counts.values()), counts

    def present(model: Any, key: Any) -> bool:
        return db_session.get(model, key) is not None

    db_session.expire_all()
    assert present(WebSession, live_session)
    assert not present(WebSession, idle_session) and not present(WebSession, old_session)
    assert present(OAuthGrant, fresh_grant.id) and present(OAuthGrant, kept_by_refresh.id)
    assert not present(OAuthGrant, dead_grant.id) and not present(OAuthGrant, revoked_long_ago.id)
    assert present(RefreshToken, sha256_hex(live_refresh)) and not present(RefreshToken, sha256_hex(dead_refresh))
    # A redeemed code stays while its grant can be revoked by a replay of it.
    assert present(AuthorizationCode, redeemed_live_grant) and present(AuthorizationCode, recent_code)
    assert not present(AuthorizationCode, unredeemed) and not present(AuthorizationCode, redeemed_gone_grant)
    assert present(AssertionJti, ("c", live_jti)) and not present(AssertionJti, ("c", dead_jti))
    keys = set(db_session.execute(select(LoginThrottle.key)).scalars())
    assert throttle.pair_key(name, "10.1.1.2") in keys and throttle.pair_key(f"old{name}", "10.1.1.1") not in keys
    db_session.rollback()
    assert codes.purge(db_session) == 0  # nothing left to do
    db_session.rollback()


def test_the_purge_runs_on_the_beat_schedule_every_ten_minutes(settings, tmp_path) -> None:
    from notifier.app_settings import PURGE_TASK
    from notifier.celery_app import make_celery

    app = make_celery(settings.with_(broker_url="memory://", broker_folder=str(tmp_path)))
    schedule = {e["task"]: e["schedule"] for e in app.conf.beat_schedule.values()}
    assert schedule[PURGE_TASK] == 600.0 and PURGE_TASK in app.tasks
    # Eagerly, the task really purges this database.
    result = app.tasks[PURGE_TASK].apply().get()
    assert {"sessions", "refresh_tokens", "grants", "codes", "throttle", "launches"} <= set(result)

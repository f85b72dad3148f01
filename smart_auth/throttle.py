"""Failed-login counters per account and per network address (table ``login_throttle``).

A fixed window per key: after ``max`` failures within ``login_window_seconds`` the key
is refused until the window ends. The account key is derived from the username as
typed (lower-cased), so unknown usernames are throttled exactly like real ones and
the throttle reveals nothing. Keys are hashed: the table holds no usernames or
addresses. Counters live in the database so that every app instance shares them.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import LoginThrottle


def account_key(username: str) -> str:
    return "acct:" + sha256_hex("acct\0" + username.strip().lower())[:59]


def address_key(address: str | None) -> str:
    return "addr:" + sha256_hex("addr\0" + (address or "unknown"))[:59]


def _limits(settings: Settings) -> dict[str, int]:
    return {"acct": settings.login_max_failures_account, "addr": settings.login_max_failures_address}


def _row(session: Session, key: str) -> LoginThrottle | None:
    return session.execute(select(LoginThrottle).where(LoginThrottle.key == key)).scalar_one_or_none()


def is_throttled(session: Session, settings: Settings, keys: list[str]) -> bool:
    """True when any of ``keys`` has used up its failures in the current window."""
    now = utcnow()
    window = timedelta(seconds=settings.login_window_seconds)
    limits = _limits(settings)
    for key in keys:
        row = _row(session, key)
        if row is None or now - as_utc(row.window_start) >= window:
            continue
        if row.failures >= limits[key.split(":", 1)[0]]:
            return True
    return False


def record_failure(session: Session, settings: Settings, keys: list[str]) -> None:
    """Count one failure on every key (a new window starts when the old one is over)."""
    now = utcnow()
    window = timedelta(seconds=settings.login_window_seconds)
    for key in keys:
        row = _row(session, key)
        if row is None:
            try:
                with session.begin_nested():
                    session.add(LoginThrottle(key=key, failures=1, window_start=now))
                continue
            except IntegrityError:  # another request created it in between
                row = _row(session, key)
                if row is None:
                    continue
        if now - as_utc(row.window_start) >= window:
            row.failures = 1
            row.window_start = now
        else:
            row.failures = LoginThrottle.failures + 1  # type: ignore[assignment]
    session.flush()


def clear(session: Session, keys: list[str]) -> None:
    session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(keys)))

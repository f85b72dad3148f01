"""Login throttling that slows guessing without letting anyone lock a real user out.

The policy (docs/security.md, "Login throttling"), after OWASP's device cookies:

- **Per (account, address): growing delays.** The first ``PAIR_FREE`` failures cost
  nothing; each one after that makes this address wait before its next try on this
  account: 2 s, 4 s, 8 s, ... up to 15 minutes. Nobody else is slowed.
- **Per account, for clients not in good standing: a slower limit.** A client is in good
  standing for an account when it shows a device cookie from an earlier successful sign-in
  of that account (``smart_auth.device_cookies``). Failures from everyone else add up per
  account; after ``login_max_failures_account`` of them within ``login_window_seconds``,
  clients without such a cookie are refused for this account until the window ends. The
  real user, with their cookie, still signs in.
- **Per device cookie.** Failures with a valid cookie count against that cookie only; after
  ``DEVICE_MAX_FAILURES`` in a window the cookie loses its standing (its holder is then
  treated like everyone else).
- **Per address: growing delays that slow that address only.** After
  ``login_max_failures_address`` failures across accounts, each further failure makes the
  address wait 1 s, 2 s, 4 s, ... up to a minute, on every account. It never locks an
  account, so a clinic behind one address is slowed, not shut out.

A refused attempt is answered before the password is looked at, with the same page and
status whether the account exists or not. The address is the client's as the trusted
proxies report it (``TRUSTED_PROXY_HOPS``; Werkzeug's ProxyFix). State lives in the
database (table ``login_throttle``, keys hashed): every app instance shares it, and the
embedded mode needs no Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import LoginThrottle

PAIR_FREE = 3
PAIR_MAX_DELAY = 900
PAIR_MEMORY = timedelta(hours=1)  # a pair's count is forgotten this long after its last failure
ADDRESS_MAX_DELAY = 60
DEVICE_MAX_FAILURES = 10


def _key(kind: str, *parts: str) -> str:
    return f"{kind}:" + sha256_hex("\0".join((kind, *parts)))[:59]


def account_key(username: str) -> str:
    """Derived from the username as typed (folded), so unknown usernames are throttled exactly
    like real ones and the throttle reveals nothing."""
    return _key("acct", (username or "").strip().lower())


def pair_key(username: str, address: str | None) -> str:
    return _key("pair", (username or "").strip().lower(), address or "unknown")


def address_key(address: str | None) -> str:
    return _key("addr", address or "unknown")


def device_key(nonce: str) -> str:
    return _key("dev", nonce)


@dataclass(frozen=True)
class Attempt:
    """Who is trying: the account as typed, the client address, and its device cookie nonce
    for this account (None: not in good standing)."""

    username: str
    address: str | None
    device: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is refused, and for how long (seconds, for Retry-After)."""

    reason: str
    retry_after: int


def _row(session: Session, key: str) -> LoginThrottle | None:
    return session.get(LoginThrottle, key)


def _blocked(row: LoginThrottle | None, now: datetime) -> int:
    if row is None or row.blocked_until is None:
        return 0
    left = (as_utc(row.blocked_until) - now).total_seconds()
    return max(0, int(left + 0.999))


def _in_window(row: LoginThrottle | None, now: datetime, window: timedelta) -> int:
    if row is None or now - as_utc(row.window_start) >= window:
        return 0
    return row.failures


def device_in_good_standing(session: Session, settings: Settings, nonce: str, now: datetime | None = None) -> bool:
    now = now or utcnow()
    window = timedelta(seconds=settings.login_window_seconds)
    return _in_window(_row(session, device_key(nonce)), now, window) < DEVICE_MAX_FAILURES


def check(session: Session, settings: Settings, attempt: Attempt, now: datetime | None = None) -> Refusal | None:
    """Whether this attempt may go ahead now (None) or must wait (a Refusal)."""
    now = now or utcnow()
    window = timedelta(seconds=settings.login_window_seconds)
    if attempt.device is not None:
        return None  # in good standing: only its own failures count (device_in_good_standing)
    wait = _blocked(_row(session, address_key(attempt.address)), now)
    if wait:
        return Refusal("address", wait)
    wait = _blocked(_row(session, pair_key(attempt.username, attempt.address)), now)
    if wait:
        return Refusal("pair", wait)
    acct = _row(session, account_key(attempt.username))
    if _in_window(acct, now, window) >= settings.login_max_failures_account and acct is not None:
        left = window - (now - as_utc(acct.window_start))
        return Refusal("account", max(1, int(left.total_seconds() + 0.999)))
    return None


def _bump(session: Session, key: str, now: datetime, window: timedelta, *, quiet: bool = False) -> LoginThrottle:
    """Count a failure on ``key``. The count starts again once ``window`` has passed since the
    window began or, with ``quiet``, since the last failure."""
    row = _row(session, key)
    if row is None:
        try:
            with session.begin_nested():
                row = LoginThrottle(key=key, failures=0, window_start=now)
                session.add(row)
        except IntegrityError:  # another request created it in between
            row = _row(session, key)
            assert row is not None
    since = row.last_failure_at if quiet else row.window_start
    if since is not None and now - as_utc(since) >= window:
        row.failures, row.window_start, row.blocked_until = 0, now, None
    row.failures += 1
    row.last_failure_at = now
    return row


def _delay(failures: int, free: int, first: int, cap: int) -> int:
    if failures <= free:
        return 0
    return min(cap, first * 2 ** min(failures - free - 1, 20))


def record_failure(session: Session, settings: Settings, attempt: Attempt, now: datetime | None = None) -> None:
    """Count one failed attempt on the keys it concerns (see the module docstring)."""
    now = now or utcnow()
    window = timedelta(seconds=settings.login_window_seconds)
    addr = _bump(session, address_key(attempt.address), now, window)
    wait = _delay(addr.failures, settings.login_max_failures_address, 1, ADDRESS_MAX_DELAY)
    addr.blocked_until = now + timedelta(seconds=wait) if wait else None
    if attempt.device is not None:
        _bump(session, device_key(attempt.device), now, window)
    else:
        pair = _bump(session, pair_key(attempt.username, attempt.address), now, PAIR_MEMORY, quiet=True)
        wait = _delay(pair.failures, PAIR_FREE, 2, PAIR_MAX_DELAY)
        pair.blocked_until = now + timedelta(seconds=wait) if wait else None
        _bump(session, account_key(attempt.username), now, window)
    session.flush()


def record_success(session: Session, attempt: Attempt) -> None:
    """A correct password: this pair's and this device's counts start again."""
    keys = [pair_key(attempt.username, attempt.address)]
    if attempt.device is not None:
        keys.append(device_key(attempt.device))
    session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(keys)))


def purge(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Delete rows that no longer delay or count anything."""
    now = now or utcnow()
    stale = now - max(timedelta(seconds=settings.login_window_seconds), PAIR_MEMORY)
    result = session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.window_start < stale,
            or_(LoginThrottle.blocked_until.is_(None), LoginThrottle.blocked_until < now),
            or_(LoginThrottle.last_failure_at.is_(None), LoginThrottle.last_failure_at < stale),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)

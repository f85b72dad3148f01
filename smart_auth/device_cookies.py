"""Device cookies (OWASP): proof that this browser signed in to an account before.

After a successful sign-in the browser gets a signed cookie naming the account (by the
hash the throttle uses, never the username) and a random nonce. Later attempts on that
account from that browser are "in good standing": failures of others on the account do
not slow them (``smart_auth.throttle``), and their own failures count against the nonce
only. One cookie holds entries for at most ``MAX_ENTRIES`` accounts (a shared computer),
each valid ``MAX_AGE_DAYS``. The signature (itsdangerous, keyed by SECRET_KEY) makes a
forged or edited cookie worthless; a stolen one is limited by its own failure count.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from fhirserver.config import Settings
from smart_auth import cookie_policy
from smart_auth.throttle import account_key

# The base name: production adds the __Host- prefix (smart_auth.cookie_policy).
COOKIE_NAME = "fhir_auth_device"
MAX_AGE_DAYS = 180
MAX_ENTRIES = 5
MAX_COOKIE = 2048


@dataclass(frozen=True)
class Entry:
    account: str  # smart_auth.throttle.account_key of the username
    nonce: str
    issued: int


def cookie_name(settings: Settings) -> str:
    return cookie_policy.name(COOKIE_NAME, settings)


def cookie_attributes(settings: Settings) -> dict[str, Any]:
    """Read only by the login form's own POST, so SameSite=Strict (and __Host-, Secure in production)."""
    return {**cookie_policy.attributes(settings, samesite="Strict"), "max_age": MAX_AGE_DAYS * 86400}


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="fhir-auth-device-cookie")


def read(value: str | None, secret_key: str, now: float | None = None) -> list[Entry]:
    """The valid entries of a cookie value; anything forged, stale or malformed counts as none."""
    if not value or len(value) > MAX_COOKIE:
        return []
    try:
        data: Any = _serializer(secret_key).loads(value, max_age=MAX_AGE_DAYS * 86400)
    except (BadSignature, ValueError, TypeError):
        return []
    now = time.time() if now is None else now
    out = []
    for item in data if isinstance(data, list) else []:
        if (
            isinstance(item, dict)
            and isinstance(item.get("a"), str)
            and isinstance(item.get("n"), str)
            and isinstance(item.get("t"), int)
            and now - item["t"] < MAX_AGE_DAYS * 86400
        ):
            out.append(Entry(item["a"], item["n"], item["t"]))
    return out[:MAX_ENTRIES]


def nonce_for(entries: list[Entry], username: str) -> str | None:
    """The nonce of this browser's entry for ``username``, if it has one."""
    wanted = account_key(username)
    return next((e.nonce for e in entries if e.account == wanted), None)


def issue(entries: list[Entry], username: str, secret_key: str, now: float | None = None) -> str:
    """A cookie value with a fresh entry for ``username`` (replacing its old one), newest first."""
    wanted = account_key(username)
    fresh = Entry(wanted, secrets.token_urlsafe(16), int(time.time() if now is None else now))
    kept = [fresh, *(e for e in entries if e.account != wanted)][:MAX_ENTRIES]
    return _serializer(secret_key).dumps([{"a": e.account, "n": e.nonce, "t": e.issued} for e in kept])

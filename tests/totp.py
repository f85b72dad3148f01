"""The test users' authenticator app: TOTP secrets by username, and codes that respect single use.

The factories (tests/factories.py, tests/auth/support.py, tests/browser/conftest.py) enrol
providers and staff with a known secret through ``smart_auth.mfa`` (:func:`enrol`); the
sign-in helpers then answer the second-factor page with :func:`code_for`. Since the server
accepts each 30-second step once per account (and one step of drift), a second sign-in in
the same step uses the next step's code, and a third waits for the step to end (rare: most
tests sign each user in once or twice). A secret learnt from the enrolment page over HTTP
is added with :func:`remember`.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pyotp

SECRETS: dict[str, str] = {}
_USED: dict[str, int] = {}
_LOCK = threading.Lock()
SECRET_RE = re.compile(r'id="mfa-secret">([A-Z2-7 ]+)<')
MFA_PATH = "/auth/mfa"


def enrol(session: Any, settings: Any, user: Any) -> str:
    """Give ``user`` an authenticator with a fresh known secret (committed by the caller)."""
    from smart_auth import mfa

    secret = pyotp.random_base32()
    mfa.enrol_with_secret(session, settings, user, secret)
    SECRETS[user.username] = secret
    return secret


def remember(username: str, secret: str, used_step: int | None = None) -> None:
    SECRETS[username] = secret.replace(" ", "")
    if used_step is not None:
        _USED[username] = used_step


def secret_from_page(html: str) -> str:
    match = SECRET_RE.search(html)
    assert match, "no secret on the enrolment page"
    return match.group(1).replace(" ", "")


def code_for(username: str) -> str:
    """A code the server has not seen for this account yet (this step's, else the next one's)."""
    secret = SECRETS[username]
    with _LOCK:
        step = int(time.time() // 30)
        last = _USED.get(username)
        if last is not None and last >= step + 1:
            time.sleep(max(0.0, last * 30 - time.time()) + 0.05)  # until step `last` has begun
            step = int(time.time() // 30)
        use = step if last is None or last < step else last + 1
        _USED[username] = use
        return str(pyotp.TOTP(secret).at(use * 30))


def enrol_code(secret: str, username: str) -> str:
    """The code confirming an enrolment over HTTP (and the step it uses up)."""
    remember(username, secret)
    return code_for(username)


def needs_code(location_or_url: str) -> bool:
    """Whether a sign-in stopped at the second-factor page (a Location header or a page URL)."""
    path = re.sub(r"^https?://[^/]+", "", location_or_url or "").split("?", 1)[0]
    return path == MFA_PATH

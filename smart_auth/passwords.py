"""Password hashing (argon2id) and the password policy.

Hashing parameters come from Settings so that production uses memory-hard values
(ASVS 11.4.2: m >= 19 MiB, t >= 2, p = 1) while tests use cheap ones. A hash made
with older parameters is upgraded at the next successful login (``needs_rehash``).

The policy follows NIST SP 800-63B / ASVS 6.2: at least 8 characters, up to 1024
allowed and never truncated, no composition rules, and a refusal of guessable passwords
measured by zxcvbn (Dropbox's estimator, with its offline frequency lists of common and
breached passwords, names and words): a score of at least ``MIN_SCORE`` (3 of 4, "safely
unguessable" against an online attack, 10^8 guesses). The username and its parts count
as known words, and a password containing the username is refused outright.
"""

from __future__ import annotations

import re
import secrets
import threading
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from fhirserver.config import Settings

MIN_LENGTH = 8
# Far above anything a person types; only there so a megabyte "password" cannot tie up a worker.
MAX_LENGTH = 1024
MIN_SCORE = 3
# zxcvbn refuses longer input (its cost grows fast): the first 72 characters are scored.
ZXCVBN_MAX = 72
# zxcvbn keeps the user inputs in a module-level dictionary: one estimate at a time.
_zxcvbn_lock = threading.Lock()


class PasswordPolicyError(ValueError):
    """The new password breaks the policy; the message is shown to the user as is."""


@lru_cache(maxsize=8)
def _hasher(time_cost: int, memory_kib: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID)


# Production cost when a caller has no Settings at hand (same values as the Settings defaults).
DEFAULT_TIME_COST = 3
DEFAULT_MEMORY_KIB = 65536


def hasher(settings: Settings | None) -> PasswordHasher:
    if settings is None:
        return _hasher(DEFAULT_TIME_COST, DEFAULT_MEMORY_KIB)
    return _hasher(settings.argon2_time_cost, settings.argon2_memory_kib)


def hash_password(settings: Settings | None, password: str) -> str:
    return hasher(settings).hash(password)


def verify_password(settings: Settings, password_hash: str, password: str) -> bool:
    """True when ``password`` matches; a malformed stored hash counts as no match."""
    try:
        return hasher(settings).verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(settings: Settings, password_hash: str) -> bool:
    try:
        return hasher(settings).check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@lru_cache(maxsize=8)
def _dummy_hash(time_cost: int, memory_kib: int) -> str:
    return _hasher(time_cost, memory_kib).hash(secrets.token_urlsafe(16))


def burn_verify(settings: Settings, password: str) -> None:
    """Verify against a throw-away hash: an unknown user costs the same time as a known one."""
    verify_password(settings, _dummy_hash(settings.argon2_time_cost, settings.argon2_memory_kib), password)


def strength(password: str, username: str = "") -> int:
    """zxcvbn's score (0-4) of ``password``, with the username's parts as known words."""
    words = [w for w in re.split(r"[^a-z0-9]+", (username or "").casefold()) if len(w) >= 3]
    with _zxcvbn_lock:
        result = zxcvbn(password[:ZXCVBN_MAX], user_inputs=[username.casefold(), *words] if username else [])
    return int(result["score"])


def check_policy(password: str, username: str = "") -> None:
    """Raise PasswordPolicyError when ``password`` may not be used; say why in plain words."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"Use at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"Use at most {MAX_LENGTH} characters.")
    name = (username or "").casefold().strip()
    if len(name) >= 3 and name in password.casefold():
        raise PasswordPolicyError("The password must not contain your username.")
    if strength(password, name) < MIN_SCORE:
        raise PasswordPolicyError(
            "This password is too easy to guess (it is common, or close to common words or patterns). "
            "A few unrelated words make a strong password that is easy to remember."
        )

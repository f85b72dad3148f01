"""Password hashing (argon2id) and the password policy.

Hashing parameters come from Settings so that production uses memory-hard values
(ASVS 11.4.2: m >= 19 MiB, t >= 2, p = 1) while tests use cheap ones. A hash made
with older parameters is upgraded at the next successful login (``needs_rehash``).

The policy follows NIST SP 800-63B / ASVS 6.2: length only (8 or more, long
passphrases allowed and never truncated), no composition rules, and a refusal of
the most common passwords and of passwords built from the username.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from fhirserver.config import Settings

MIN_LENGTH = 8
# Far above anything a person types; only there so a megabyte "password" cannot tie up a worker.
MAX_LENGTH = 1024

# The most common passwords of public breach corpora (lower-cased). Short ones are already
# refused by the length rule; they stay listed so that the list documents itself.
_COMMON = """
    123456 123456789 12345678 password qwerty123 qwerty1 111111 12345 secret 123123 1234567890
    1234567 000000 qwerty abc123 password1 iloveyou 11111111 dragon monkey 123321 654321 666666
    121212 123qwe 1q2w3e4r 1q2w3e4r5t qwertyuiop asdfghjkl zxcvbnm qazwsx 1qaz2wsx passw0rd p@ssw0rd
    p@ssword password123 password12 password1234 welcome welcome1 welcome123 letmein letmein1 admin
    admin123 administrator root toor changeme changeme1 changeme123 default guest test test1234
    testing trustno1 sunshine princess football baseball basketball soccer hockey superman batman
    starwars whatever freedom shadow master master123 michael jennifer jordan23 hunter2 hunter22
    charlie donald mustang access login loveme lovely flower hello123 hello1234 computer internet
    samsung 11223344 12341234 1234qwer qwer1234 abcd1234 abcdefg abcdefgh abcdefg1 a1b2c3d4 aa123456
    987654321 87654321 88888888 99999999 00000000 12121212 11112222 112233 qwertyui q1w2e3r4
    q1w2e3r4t5 zaq12wsx zaq1zaq1 1qazxsw2 passpass pass1234 mypassword secret123 summer2024
    winter2024 spring2024 autumn2024 summer2025 winter2025 spring2025 autumn2025 summer2026
    winter2026 spring2026 autumn2026 january february iloveyou1 iloveu princess1 babygirl babygirl1
    michelle jessica ashley nicole daniel anthony matthew joshua andrew thomas robert william
    richard patient patient1 patient123 doctor doctor123 nurse123 hospital clinic123 health123
    medical123 portal123 letmein123 blink182 liverpool chelsea arsenal pokemon minecraft fortnite
"""
COMMON_PASSWORDS = frozenset(_COMMON.split())


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


def check_policy(password: str, username: str = "") -> None:
    """Raise PasswordPolicyError when ``password`` may not be used; say why in plain words."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"Use at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"Use at most {MAX_LENGTH} characters.")
    folded = password.casefold()
    if folded in COMMON_PASSWORDS or folded.strip() in COMMON_PASSWORDS:
        raise PasswordPolicyError("This password is too common. Choose a less predictable one.")
    name = (username or "").casefold().strip()
    if len(name) >= 3 and name in folded:
        raise PasswordPolicyError("The password must not contain your username.")
    if len(set(password)) == 1:
        raise PasswordPolicyError("The password must not repeat a single character.")

"""Password hashing (argon2id, rehash on parameter change) and the password policy."""

from __future__ import annotations

import pytest

from fhirserver.config import Settings
from smart_auth import passwords
from smart_auth.passwords import PasswordPolicyError, check_policy

CHEAP = Settings(database_url="sqlite://", argon2_time_cost=1, argon2_memory_kib=1024)


def test_hash_is_argon2id_with_configured_cost_and_verifies() -> None:
    h = passwords.hash_password(CHEAP, "a long enough passphrase")
    assert h.startswith("$argon2id$")
    assert "m=1024,t=1,p=1" in h
    assert passwords.verify_password(CHEAP, h, "a long enough passphrase")
    assert not passwords.verify_password(CHEAP, h, "a long enough passphrasE")
    assert not passwords.verify_password(CHEAP, "not-a-hash", "anything")


def test_production_defaults_meet_asvs_minimum() -> None:
    h = passwords.hash_password(None, "a long enough passphrase")
    assert "m=65536,t=3,p=1" in h  # ASVS 11.4.2: m >= 19 MiB, t >= 2, p = 1


def test_needs_rehash_when_parameters_change() -> None:
    h = passwords.hash_password(CHEAP, "a long enough passphrase")
    assert not passwords.needs_rehash(CHEAP, h)
    stronger = CHEAP.__class__(database_url="sqlite://", argon2_time_cost=2, argon2_memory_kib=2048)
    assert passwords.needs_rehash(stronger, h)


@pytest.mark.parametrize(
    ("password", "username", "why"),
    [
        ("short12", "", "at least 8"),
        ("", "", "at least 8"),
        ("password123", "", "too easy to guess"),
        ("PassWord123", "", "too easy to guess"),
        ("qwertyuiop", "", "too easy to guess"),
        ("Password1!", "", "too easy to guess"),  # defect 11: the hand-made list let it through
        ("Summer2026!", "", "too easy to guess"),
        ("P@ssw0rd2024", "", "too easy to guess"),
        ("iloveyou123", "", "too easy to guess"),
        ("xx-lena4821-xx", "lena4821", "username"),
        ("LENA4821 rocks", "lena4821", "username"),
        ("lena.rivera-2026", "lena.rivera", "username"),
        ("aaaaaaaaaaaa", "", "too easy to guess"),
        ("y" * 40 + "z" * 60, "", "too easy to guess"),  # long, but two repeated letters
        ("x" * 1025, "", "at most"),
    ],
)
def test_F2_policy_refuses(password: str, username: str, why: str) -> None:
    with pytest.raises(PasswordPolicyError, match=why):
        check_policy(password, username)


@pytest.mark.parametrize(
    "password",
    [
        "Zq!7vB2kP",  # short and random
        "all lower case words",  # no composition rules
        "ÄÖÜ unicode pässwörd",
        "correct horse battery staple",
        "a calm blue lake at dawn " * 6,  # 150 characters: long passphrases are fine (72 scored)
    ],
)
def test_F2_policy_accepts(password: str) -> None:
    check_policy(password, "someone")


def test_F2_the_demo_passwords_pass_the_policy() -> None:
    """The seeded accounts are created through the same policy (fhirserver seed would refuse them)."""
    import json
    from pathlib import Path

    fixture = json.loads((Path(__file__).parents[2] / "fixtures" / "demo-practice.json").read_text())
    for user in fixture["users"]:
        check_policy(user["password"], user["username"])


def test_the_username_counts_as_a_known_word() -> None:
    """zxcvbn sees the username: a password built from it scores lower than the same shape without."""
    assert passwords.strength("kowalski1987!", "kowalski") < passwords.strength("kowalski1987!", "")


def test_no_truncation_long_passwords_differ_at_the_end() -> None:
    base = "p" * 100 + "q" * 100
    h = passwords.hash_password(CHEAP, base + "1")
    assert passwords.verify_password(CHEAP, h, base + "1")
    assert not passwords.verify_password(CHEAP, h, base + "2")

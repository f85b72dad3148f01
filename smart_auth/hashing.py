"""Hashes of long random secrets (codes, refresh tokens, session ids, client secrets).

These values carry 256 bits of randomness, so a plain SHA-256 is enough to make a
stolen table useless; argon2 is reserved for human passwords.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def same_hash(value: str, expected_hex: str | None) -> bool:
    """Constant-time comparison of ``sha256(value)`` with a stored hash."""
    if not expected_hex:
        return False
    return hmac.compare_digest(sha256_hex(value), expected_hex)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns: read them as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

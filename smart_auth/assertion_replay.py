"""Replay protection for client assertions (RFC 7523 §3, SMART Backend Services): one use per ``jti``.

A backend client signs a fresh assertion, with a fresh ``jti``, for every token request.
Each ``jti`` is remembered (table ``oauth_assertion_jti``, keyed by client and the SHA-256
of the ``jti``) until the assertion's own ``exp``: after that the assertion is refused for
its expiry anyway. The row is written with an insert that does nothing on a key conflict,
so that of two requests with the same assertion, in any processes or instances, exactly
one inserts the row and the other is refused. Expired rows of the client are deleted on
the way (one indexed DELETE), so the table stays as small as the live assertions.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from smart_auth.hashing import sha256_hex
from smart_auth.models import AssertionJti

MAX_JTI_LENGTH = 255


def remember(session: Session, client_id: str, jti: str, exp: int, now: datetime) -> bool:
    """Record ``jti`` for ``client_id`` until ``exp``; False when it was already recorded (a replay)."""
    session.execute(delete(AssertionJti).where(AssertionJti.client_id == client_id, AssertionJti.expires_at <= now))
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(AssertionJti)
        .values(client_id=client_id, jti_hash=sha256_hex(jti), expires_at=datetime.fromtimestamp(exp, UTC))
        .on_conflict_do_nothing(index_elements=["client_id", "jti_hash"])
        .returning(AssertionJti.jti_hash)
    )
    # RETURNING, not rowcount: the ORM's insert path does not report a rowcount on every driver.
    return session.execute(stmt).first() is not None


def purge(session: Session, now: datetime) -> int:
    """Delete every expired ``jti`` (for housekeeping; :func:`remember` also purges per client)."""
    result = session.execute(delete(AssertionJti).where(AssertionJti.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)

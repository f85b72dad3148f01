"""Refresh tokens (table ``oauth_refresh_token``): opaque, hashed, rotated on every use.

Each refresh revokes the token it used and issues a new one in the same grant
(rotation). Presenting a revoked token again means it was copied: its whole grant is
then revoked, access tokens included (reuse detection, ASVS 10.4.5; ``smart_auth.grants``).
Offline tokens live ``refresh_token_days`` and are renewed by rotation; online tokens
end with the login session's absolute lifetime and keep their original expiry through
rotations (and end at logout with their grant).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import RefreshToken


@dataclass(frozen=True)
class RefreshGrant:
    grant_id: str
    client_id: str
    user_id: str
    scope: str
    launch_patient: str | None
    expires_at: datetime


def expiry_for(settings: Settings, scope: str, inherited: datetime | None = None) -> datetime:
    if "offline_access" in scope.split():
        return utcnow() + timedelta(days=settings.refresh_token_days)
    if inherited is not None:
        return as_utc(inherited)
    return utcnow() + timedelta(hours=settings.session_absolute_hours)


def create(session: Session, grant: RefreshGrant) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            token_hash=sha256_hex(token),
            grant_id=grant.grant_id,
            client_id=grant.client_id,
            user_id=grant.user_id,
            scope=grant.scope,
            launch_patient=grant.launch_patient,
            issued_at=utcnow(),
            expires_at=grant.expires_at,
            revoked=False,
        )
    )
    session.flush()
    return token


def find(session: Session, token: str) -> RefreshToken | None:
    if not isinstance(token, str) or not token or len(token) > 512:
        return None
    return session.execute(
        select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(token))
    ).scalar_one_or_none()


def is_live(row: RefreshToken) -> bool:
    return not row.revoked and as_utc(row.expires_at) > utcnow()


def claim(session: Session, row: RefreshToken) -> bool:
    """Revoke the token for rotation; False when a concurrent request rotated it first."""
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == row.token_hash, RefreshToken.revoked.is_(False))
        .values(revoked=True)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def purge(session: Session) -> int:
    """Delete refresh tokens past their expiry (a replay of one is then simply unknown)."""
    result = session.execute(delete(RefreshToken).where(RefreshToken.expires_at < utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)

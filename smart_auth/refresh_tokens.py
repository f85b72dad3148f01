"""Refresh tokens (table ``oauth_refresh_token``): opaque, hashed, rotated on every use.

Each refresh revokes the token it used and issues a new one (rotation). Presenting a
revoked token again means it was copied: every refresh token of that user and client
is then revoked (reuse detection, ASVS 10.4.5). Offline tokens live
``refresh_token_days`` and are renewed by rotation; online tokens end with the login
session's absolute lifetime and keep their original expiry through rotations.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import RefreshToken


@dataclass(frozen=True)
class RefreshGrant:
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


def revoke_family(session: Session, user_id: str, client_id: str) -> int:
    """Revoke every refresh token of a user for a client (replay detected, or the user revokes the app)."""
    result = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.user_id == user_id,
            RefreshToken.client_id == client_id,
            RefreshToken.revoked.is_(False),
        )
        .values(revoked=True)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def revoke_online(session: Session, user_id: str) -> int:
    """At logout: revoke the user's refresh tokens granted with ``online_access`` only.

    ``online_access`` means "while the user stays signed in"; ``offline_access`` tokens
    survive logout until they expire or the user revokes the app.
    """
    rows = session.execute(
        select(RefreshToken).where(RefreshToken.user_id == user_id, RefreshToken.revoked.is_(False))
    ).scalars()
    count = 0
    for row in rows:
        scopes = row.scope.split()
        if "online_access" in scopes and "offline_access" not in scopes:
            row.revoked = True
            count += 1
    session.flush()
    return count

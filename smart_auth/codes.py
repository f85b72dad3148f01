"""Authorization codes (table ``oauth_code``): hashed, bound to client and redirect URI, 60 s, single use.

A redeemed code is kept (flagged ``used``) until it has expired, so that a second
redemption is recognised as a replay (RFC 6749 §4.1.2: the server should then revoke
what the code produced). Claiming is a single conditional UPDATE, so two concurrent
redemptions cannot both succeed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import AuthorizationCode, OAuthGrant

CODE_LIFETIME_SECONDS = 60


@dataclass(frozen=True)
class NewCode:
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    launch_patient: str | None
    auth_time: int
    nonce: str | None = None
    login_id: str | None = None
    ehr_launch: bool = False  # the code of an EHR launch (smart_auth.launch)


def new_value() -> str:
    """A fresh code: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def store(session: Session, code: str, new: NewCode) -> None:
    """Store the hash of ``code`` with what it grants (the code itself exists only in the redirect)."""
    now = utcnow()
    session.add(
        AuthorizationCode(
            code_hash=sha256_hex(code),
            client_id=new.client_id,
            user_id=new.user_id,
            redirect_uri=new.redirect_uri,
            scope=new.scope,
            nonce=new.nonce,
            code_challenge=new.code_challenge,
            code_challenge_method=new.code_challenge_method,
            launch_patient=new.launch_patient,
            auth_time=new.auth_time,
            login_id=new.login_id,
            ehr_launch=new.ehr_launch,
            expires_at=now + timedelta(seconds=CODE_LIFETIME_SECONDS),
            used=False,
        )
    )
    session.flush()


def find(session: Session, code: str) -> AuthorizationCode | None:
    if not isinstance(code, str) or not code or len(code) > 512:
        return None
    return session.execute(
        select(AuthorizationCode).where(AuthorizationCode.code_hash == sha256_hex(code))
    ).scalar_one_or_none()


def purge(session: Session) -> int:
    """Delete expired codes that no replay could still act on: never redeemed, or redeemed by a
    grant that is gone (``smart_auth.grants.purge``). A redeemed code stays as long as its grant,
    so that presenting it again still revokes what it produced."""
    grant_gone = ~exists(select(OAuthGrant.id).where(OAuthGrant.id == AuthorizationCode.grant_id))
    result = session.execute(
        delete(AuthorizationCode).where(
            AuthorizationCode.expires_at < utcnow() - timedelta(hours=1),
            AuthorizationCode.grant_id.is_(None) | grant_gone,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def is_live(row: AuthorizationCode) -> bool:
    return not row.used and as_utc(row.expires_at) > utcnow()


def claim(session: Session, row: AuthorizationCode, grant_id: str) -> bool:
    """Mark the code used by grant ``grant_id``; False when someone else redeemed it first."""
    result = session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hash == row.code_hash, AuthorizationCode.used.is_(False))
        .values(used=True, grant_id=grant_id)
    )
    return bool(getattr(result, "rowcount", 0) == 1)

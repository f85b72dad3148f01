"""Grants (table ``oauth_grant``): what one authorization gave one client, and whether it stands.

A grant is made when an authorization code is redeemed, or when an operator prints a
token (``fhirserver token``). Every access token names its grant (claim ``gid``) and every
refresh token belongs to one; refresh rotation keeps the grant. The API checks the grant
on every request (``smart_auth.resource_server``), so revoking it ends at once every token
it produced, in every process and on every instance, with no cache and no Redis.

A grant ends (``revoked_at`` set, with a reason) when:

- its client or user revokes one of its tokens (RFC 7009, ``revoked``);
- its code or one of its rotated refresh tokens is presented again (``code-replay``,
  ``refresh-replay``): someone holds a copy;
- the user logs out, for grants without ``offline_access`` made in that login (``logout``);
- the patient's password is reset, or the account is disabled (``password-reset``,
  ``account-disabled``): every grant of the user ends.

A disabled account also fails the check by itself (the lookup joins the account), so even
a grant revoked late cannot outlive the account.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth import tokens
from smart_auth.hashing import utcnow
from smart_auth.models import OAuthGrant, RefreshToken, UserAccount


def new_id() -> str:
    return uuid.uuid4().hex


def create(
    session: Session,
    *,
    user_id: str,
    client_id: str,
    scope: str,
    login_id: str | None,
    grant_id: str | None = None,
    now: datetime | None = None,
) -> OAuthGrant:
    now = now or utcnow()
    grant = OAuthGrant(
        id=grant_id or new_id(),
        user_id=user_id,
        client_id=client_id,
        scope=" ".join(scope.split()),
        offline="offline_access" in scope.split(),
        login_id=login_id,
        created_at=now,
        last_issued_at=now,
    )
    session.add(grant)
    session.flush()
    return grant


def create_system(session: Session, *, client_id: str, scope: str) -> OAuthGrant:
    """The grant of one backend-service token (``smart_auth.backend_services``).

    No user stands behind it: the client is its own subject (``user_id`` = ``client_id``,
    as the token's ``sub``), and the API checks it against the client's registration
    instead of an account (``smart_auth.resource_server``).
    """
    return create(session, user_id=client_id, client_id=client_id, scope=scope, login_id=None)


def get(session: Session, grant_id: str | None) -> OAuthGrant | None:
    if not grant_id or len(grant_id) > 32 or "\x00" in grant_id:
        return None
    return session.get(OAuthGrant, grant_id)


def note_issue(session: Session, grant_id: str) -> None:
    """A token was issued from this grant now (housekeeping keeps grants whose tokens may live)."""
    session.execute(update(OAuthGrant).where(OAuthGrant.id == grant_id).values(last_issued_at=utcnow()))


def _revoke_where(session: Session, reason: str, *conditions: object) -> list[str]:
    ids = list(
        session.execute(
            select(OAuthGrant.id).where(OAuthGrant.revoked_at.is_(None), *conditions)  # type: ignore[arg-type]
        ).scalars()
    )
    if not ids:
        return []
    now = utcnow()
    session.execute(
        update(OAuthGrant)
        .where(OAuthGrant.id.in_(ids), OAuthGrant.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason=reason)
    )
    session.execute(
        update(RefreshToken).where(RefreshToken.grant_id.in_(ids), RefreshToken.revoked.is_(False)).values(revoked=True)
    )
    session.flush()
    return ids


def revoke(session: Session, grant_id: str, reason: str) -> bool:
    """End one grant and its refresh tokens; False when it was unknown or already ended."""
    return bool(_revoke_where(session, reason, OAuthGrant.id == grant_id))


def revoke_user(session: Session, user_id: str, reason: str) -> int:
    """End every grant of a user (password reset, account disabled)."""
    return len(_revoke_where(session, reason, OAuthGrant.user_id == user_id))


def revoke_login(session: Session, login_id: str, reason: str = "logout") -> int:
    """End the grants of one sign-in that did not ask for offline access (logout)."""
    return len(_revoke_where(session, reason, OAuthGrant.login_id == login_id, OAuthGrant.offline.is_(False)))


def revoke_client(session: Session, user_id: str, client_id: str, reason: str) -> int:
    """End every grant a user gave one client (the user revokes the app)."""
    return len(_revoke_where(session, reason, OAuthGrant.user_id == user_id, OAuthGrant.client_id == client_id))


def purge(session: Session, now: datetime, token_lifetime: timedelta) -> int:
    """Delete grants that no token can use any more.

    A grant can go once no access token from it can be unexpired (its last issue is older
    than the longest token lifetime) and it has no unexpired refresh token. Revoked grants
    are kept as long as that too, so that a token presented after revocation still meets
    its grant's "revoked" rather than an unknown id.
    """
    live_refresh = exists(
        select(RefreshToken.token_hash).where(RefreshToken.grant_id == OAuthGrant.id, RefreshToken.expires_at > now)
    )
    old = OAuthGrant.last_issued_at < now - token_lifetime
    ended = (OAuthGrant.revoked_at.is_not(None)) & (OAuthGrant.revoked_at < now - token_lifetime)
    result = session.execute(delete(OAuthGrant).where((old & ~live_refresh) | ended))
    session.execute(
        delete(RefreshToken).where(
            RefreshToken.grant_id.is_not(None),
            ~exists(select(OAuthGrant.id).where(OAuthGrant.id == RefreshToken.grant_id)),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def issue_token(
    session: Session,
    settings: Settings,
    *,
    user: UserAccount,
    client_id: str,
    scope: str,
    patient: str | None = None,
    lifetime: int | None = None,
) -> str:
    """A grant of its own and one access token from it, with no browser sign-in behind it.

    For operators and scripts (``fhirserver token``) and for tests. The grant ends like any
    other: revocation, a password reset or a disabled account end its token at once.
    """
    grant = create(session, user_id=user.id, client_id=client_id, scope=scope, login_id=None)
    return tokens.issue_access_token(
        settings, user=user, client_id=client_id, scope=scope, grant_id=grant.id, patient=patient, lifetime=lifetime
    )

"""A token we issued, as the revocation and introspection endpoints see it (access or refresh).

Both endpoints take any string a caller sends; :func:`find` turns it into an
:class:`IssuedToken` or None, never an error: an unknown, malformed or foreign string is
simply "no token" (RFC 7009 answers 200, RFC 7662 ``{"active": false}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth import refresh_tokens
from smart_auth.hashing import as_utc
from smart_auth.models import UserAccount
from smart_auth.resource_server import grant_state
from smart_auth.tokens import InvalidToken, check_times, verify_signature

ACCESS = "access_token"
REFRESH = "refresh_token"


@dataclass
class IssuedToken:
    kind: str  # ACCESS or REFRESH
    client_id: str
    user_id: str
    grant_id: str | None
    scope: str
    exp: int
    iat: int
    live: bool  # in time, not revoked, grant and account live
    claims: dict[str, Any] = field(default_factory=dict)  # an access token's claims

    # -- what Authlib's endpoints call ------------------------------------------------
    def check_client(self, client: Any) -> bool:
        return bool(client is not None and client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return not self.live

    def is_revoked(self) -> bool:
        return not self.live


def _access(session: Session, settings: Settings, value: str) -> IssuedToken | None:
    try:
        claims = verify_signature(value, settings)
    except InvalidToken:
        return None
    live = True
    try:
        check_times(claims)
    except InvalidToken:
        live = False
    if live:
        live = grant_state(session, str(claims["gid"]), str(claims["sub"]), str(claims["role"])) is not None
    return IssuedToken(
        ACCESS,
        str(claims["client_id"]),
        str(claims["sub"]),
        str(claims["gid"]),
        str(claims["scope"]),
        int(claims["exp"]),
        int(claims["iat"]),
        live,
        claims,
    )


def _refresh(session: Session, value: str) -> IssuedToken | None:
    row = refresh_tokens.find(session, value)
    if row is None:
        return None
    user = session.get(UserAccount, row.user_id)
    live = refresh_tokens.is_live(row) and user is not None and user.active
    if live and row.grant_id:
        live = grant_state(session, row.grant_id, row.user_id, user.role if user else "") is not None
    return IssuedToken(
        REFRESH,
        row.client_id,
        row.user_id,
        row.grant_id,
        row.scope,
        int(as_utc(row.expires_at).timestamp()),
        int(as_utc(row.issued_at).timestamp()),
        live and bool(row.grant_id),
    )


def find(session: Session, settings: Settings, value: Any, hint: str | None = None) -> IssuedToken | None:
    """The token ``value`` names, whatever the hint says (RFC 7009 2.1: the hint may be wrong)."""
    if not isinstance(value, str) or not value or len(value) > 8192 or "\x00" in value:
        return None
    finders = [lambda: _access(session, settings, value), lambda: _refresh(session, value)]
    if hint == REFRESH:
        finders.reverse()
    for finder in finders:
        found = finder()
        if found is not None:
            return found
    return None

"""From an ``Authorization: Bearer`` header to a Principal (or a 401 with WWW-Authenticate).

The token itself is checked by the TokenAuthority the app factory wired in
(``fhirserver.core.ports``): signature, claims, and that its grant is still live.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from fhirserver.core.errors import unauthorized
from fhirserver.core.ports import TokenAuthority, TokenRejected
from fhirserver.core.principal import Principal
from fhirserver.core.scopes import ScopeSet

MAX_HEADER = 8192


def principal_from_header(
    header: str | None,
    session: Session,
    tokens: TokenAuthority,
    address: str | None,
    request_id: str,
    *,
    defer_grant: bool = False,
) -> Principal:
    """The request's Principal. ``defer_grant``: the interaction is a plain read, whose own
    query may check the grant's state (``TokenAuthority.authenticate``)."""
    if not header:
        raise unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(header) > MAX_HEADER:
        raise unauthorized("invalid_request")
    try:
        identity = tokens.authenticate(session, token.strip(), defer=defer_grant)
    except TokenRejected as exc:
        raise unauthorized("invalid_token") from exc
    claims = identity.claims
    user_id = claims.get("sub")
    return Principal(
        role=str(claims.get("role", "")),
        scopes=ScopeSet.parse(str(claims.get("scope", ""))),
        user_id=str(user_id) if user_id else None,
        fhir_user=claims.get("fhirUser"),
        client_id=claims.get("client_id"),
        patient=claims.get("patient"),
        staff_of=identity.staff_of,
        break_glass=identity.break_glass,
        pending=identity.pending,
        address=address,
        request_id=request_id,
        token_jti=claims.get("jti"),
    )

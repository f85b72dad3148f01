"""From an ``Authorization: Bearer`` header to a Principal (or a 401 with WWW-Authenticate)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.errors import FhirError
from fhirserver.core.principal import Principal
from smart_auth.scopes import ScopeSet


def unauthorized(error: str | None = None) -> FhirError:
    challenge = 'Bearer realm="fhir"'
    if error:
        challenge += f', error="{error}"'
    exc = FhirError(401, "login", "A valid access token is required")
    exc.headers["WWW-Authenticate"] = challenge
    return exc


def principal_from_header(
    header: str | None, session: Session, settings: Settings, address: str | None, request_id: str
) -> Principal:
    from smart_auth.accounts import staff_providers
    from smart_auth.tokens import InvalidToken, verify_access_token

    if not header:
        raise unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("invalid_request")
    try:
        claims = verify_access_token(token.strip(), settings)
    except InvalidToken as exc:
        raise unauthorized("invalid_token") from exc
    role = str(claims.get("role", ""))
    user_id = claims.get("sub")
    staff_of: tuple[str, ...] = ()
    if role == "staff" and user_id:
        staff_of = tuple(staff_providers(session, str(user_id)))
    return Principal(
        role=role,
        scopes=ScopeSet.parse(str(claims.get("scope", ""))),
        user_id=str(user_id) if user_id else None,
        fhir_user=claims.get("fhirUser"),
        client_id=claims.get("client_id"),
        patient=claims.get("patient"),
        staff_of=staff_of,
        address=address,
        request_id=request_id,
        token_jti=claims.get("jti"),
    )

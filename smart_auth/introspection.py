"""Token introspection (RFC 7662) at ``/auth/introspect``, advertised as ``introspection_endpoint``.

Callers authenticate as confidential clients. A client registered as a resource server
(``oauth_client.resource_server``) may introspect any token; any other confidential client
only the tokens issued to it. A live token is described as SMART's token-introspection
page asks (scope, client_id, exp, iat, sub, iss, patient, fhirUser, token_type); a token
that is unknown, expired, revoked, of a disabled account or not the caller's to see gets
exactly ``{"active": false}``.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from smart_auth import issued_tokens
from smart_auth.tokens import issuer
from smart_auth.web_support import dbs


class SmartIntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return issued_tokens.find(dbs(), self.server.settings, token_string, token_type_hint)

    def check_permission(self, token: issued_tokens.IssuedToken, client: Any, request: Any) -> bool:
        return bool(getattr(client.row, "resource_server", False)) or token.check_client(client)

    def introspect_token(self, token: issued_tokens.IssuedToken) -> dict[str, Any]:
        body: dict[str, Any] = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "exp": token.exp,
            "iat": token.iat,
            "sub": token.user_id,
            "iss": issuer(self.server.settings),
            "token_type": "Bearer" if token.kind == issued_tokens.ACCESS else "refresh_token",
        }
        claims = token.claims
        if token.kind == issued_tokens.ACCESS:
            body["aud"] = claims.get("aud")
            if claims.get("patient"):
                body["patient"] = claims["patient"]
            if claims.get("fhirUser"):  # absolute, as in the id_token
                body["fhirUser"] = f"{self.server.settings.fhir_base}/{claims['fhirUser']}"
        return body

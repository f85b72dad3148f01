"""Token revocation (RFC 7009) at ``/auth/revoke``, advertised as ``revocation_endpoint``.

Authlib's endpoint does the protocol (client authentication, parameters, the 200); we
decide what revoking means: the whole grant of the token ends, access and refresh tokens
alike (``smart_auth.grants``). RFC 7009 lets the server revoke more than the one token;
ending the grant is what lets a revoked refresh token take its access tokens with it, at
once, although they are self-contained JWTs. A token that is unknown, expired or issued to
another client gets the same empty 200 and changes nothing, so the endpoint is no oracle.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint
from flask import request as flask_request

from fhirserver.core.audit import security_event
from smart_auth import grants, issued_tokens
from smart_auth.web_support import dbs


class SmartRevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    # Public clients revoke with their client_id alone (PKCE was their only proof anyway);
    # backend services with a client assertion, as at the token endpoint.
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]

    def authenticate_token(self, request: Any, client: Any) -> issued_tokens.IssuedToken | None:
        self.check_params(request, client)
        token = issued_tokens.find(
            dbs(), self.server.settings, request.form.get("token"), request.form.get("token_type_hint")
        )
        # Another client's token: the same silent 200 as an unknown one (RFC 7009 2.2).
        return token if token is not None and token.check_client(client) else None

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return issued_tokens.find(dbs(), self.server.settings, token_string, token_type_hint)

    def revoke_token(self, token: issued_tokens.IssuedToken, request: Any) -> None:
        if token.grant_id and grants.revoke(dbs(), token.grant_id, "revoked"):
            security_event(
                dbs(),
                subtype="token-revoke",
                outcome="0",
                user_id=token.user_id,
                client_id=token.client_id,
                address=flask_request.remote_addr,
                description=f"grant revoked ({token.kind})",
            )

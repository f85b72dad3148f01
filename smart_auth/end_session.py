"""Back-channel logout: a client ends the user's sign-in at the authorization server.

``POST /auth/end-session`` (client authentication, form parameter ``id_token_hint``) ends
the sign-in named by the id_token's ``sid``: every browser session of that sign-in is
deleted and its grants without ``offline_access`` are revoked. The browser's cookie then
names nothing, so nobody can come back in without a password.

It exists for one click to sign out everywhere: the portal's logout revokes its refresh
tokens (RFC 7009), calls this, and clears its own session, all server-side; the browser
never sees an intermediate "sign out of the authorization server?" page at which it could
stop while still signed in. It borrows OpenID Connect's ``id_token_hint`` and ``sid``
(RP-Initiated and Back-Channel Logout) but is called server to server; a client can end
only a sign-in whose id_token it was issued, and only with its own credentials.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import Response, jsonify
from flask import request as flask_request

from fhirserver.core.audit import security_event
from smart_auth import grants, sessions, tokens
from smart_auth.web_support import dbs, get_state

AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


def _error(status: int, error: str, description: str) -> Response:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status
    return response


def end_session() -> Response:
    server = get_state().server
    try:
        client = server.authenticate_client(server.create_oauth2_request(flask_request), AUTH_METHODS, "end_session")
    except OAuth2Error:
        response = _error(401, "invalid_client", "Client authentication failed.")
        response.headers["WWW-Authenticate"] = 'Basic realm="auth"'
        return response
    try:
        claims = tokens.verify_id_token_hint(
            flask_request.form.get("id_token_hint", ""), server.settings, client.get_client_id()
        )
    except tokens.InvalidToken:
        return _error(400, "invalid_request", "id_token_hint is not an id_token issued to this client.")
    login_id = claims["sid"]
    ended = sessions.end_login(dbs(), login_id)
    revoked = grants.revoke_login(dbs(), login_id)
    security_event(
        dbs(),
        subtype="logout",
        outcome="0",
        user_id=claims["sub"],
        client_id=client.get_client_id(),
        address=flask_request.remote_addr,
        description=f"sign-in ended by its client: {ended} session(s), {revoked} grant(s)",
    )
    dbs().commit()
    return Response(status=204)

"""The OAuth 2 authorization server (Authlib) configured for SMART App Launch.

Authlib supplies the protocol (request validation, client authentication, error
responses); this module binds it to our tables and closes the gaps its defaults
leave for SMART (see docs in /work/shared/reference/library-notes.md):

- PKCE S256 required from every client (``smart_auth.pkce``);
- codes live 60 s, are stored hashed and can be redeemed once (``smart_auth.codes``);
- access tokens are RS256 JWTs of at most an hour (``smart_auth.tokens``), never
  Authlib's 10-day default;
- refresh tokens are issued only for ``offline_access``/``online_access``, rotated
  on every use, with replay detection (``smart_auth.refresh_tokens``);
- a refresh may narrow the scope but never widen it, and only its own client may use it;
- every token belongs to a grant (``smart_auth.grants``), made when the code is redeemed:
  a replayed code or refresh token revokes the grant, access tokens included;
- revocation (RFC 7009) and introspection (RFC 7662) are Authlib's endpoints over our
  tokens (``smart_auth.revocation``, ``smart_auth.introspection``).

The authorize endpoint's user interaction (login, patient picker, consent) lives in
``smart_auth.authorize_views``; it hands the outcome to :meth:`issue_code` as a
:class:`Decision`.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from flask import Flask
from flask import request as flask_request

from fhirserver.config import Settings
from fhirserver.core.audit import security_event
from fhirserver.core.scopes import ScopeError, validate_requested
from smart_auth import clients, codes, grants, launch, refresh_tokens, scope_policy, tokens
from smart_auth.models import OAuthClient, RefreshToken, UserAccount
from smart_auth.pkce import S256CodeChallenge
from smart_auth.web_support import dbs

log = logging.getLogger(__name__)
# private_key_jwt: backend services only (smart_auth.backend_services); an app's row refuses it.
TOKEN_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]


class SmartClient(ClientMixin):
    """Authlib's view of an ``oauth_client`` row."""

    def __init__(self, row: OAuthClient) -> None:
        self.row = row
        self.client_id = row.client_id

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # SMART requires redirect_uri on every request

    def get_allowed_scope(self, scope: str | None) -> str | None:
        granted = scope_policy.for_client((scope or "").split(), self.row.scope)
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in clients.redirect_uris(self.row)

    def check_client_secret(self, client_secret: str) -> bool:
        return clients.check_secret(self.row, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if clients.is_backend(self.row):
            return method == "private_key_jwt"
        if clients.is_public(self.row):
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in clients.grant_types(self.row)


@dataclass
class Decision:
    """What the user approved on the authorize pages: who, which scopes, which patient."""

    user: UserAccount
    scopes: list[str]
    patient: str | None
    auth_time: int
    login_id: str | None = None
    ehr_launch: bool = False  # the patient came from an EHR launch (smart_auth.launch)

    @property
    def id(self) -> str:  # Authlib logs/uses request.user.id in places
        return self.user.id


@dataclass
class TokenContext:
    """What the token being built needs beyond Authlib's (user, scope): patient and refresh policy."""

    grant_id: str = ""
    patient: str | None = None
    nonce: str | None = None
    auth_time: int | None = None
    login_id: str | None = None
    refresh_scope: str | None = None
    refresh_patient: str | None = None
    refresh_expires_at: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class DictOAuth2Request(OAuth2Request):
    """An authorization request rebuilt from the parameters kept in the login session."""

    def __init__(self, uri: str, params: dict[str, str]) -> None:
        super().__init__(method="GET", uri=uri, headers={})
        self._params = dict(params)
        self.payload = BasicOAuth2Payload(self._params)

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return self._params


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """(client_id, secret) from ``Authorization: Basic``, form-decoded per RFC 6749 §2.3.1; None if malformed."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def _authenticate_client_secret_basic(query_client: Any, request: OAuth2Request) -> SmartClient | None:
    creds = parse_basic_auth(request.headers.get("Authorization"))
    if creds is None:
        return None
    client = query_client(creds[0])
    if client is not None and client.check_client_secret(creds[1]):
        return client  # type: ignore[no-any-return]
    return None


class SmartAuthorizationServer(AuthorizationServer):
    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        super().__init__()
        self.init_app(app)
        self.register_grant(SmartCodeGrant, [S256CodeChallenge()])
        self.register_grant(SmartRefreshGrant)
        from smart_auth.backend_services import PrivateKeyJWT, SmartClientCredentialsGrant

        self.register_grant(SmartClientCredentialsGrant)
        self.register_client_auth_method(
            "private_key_jwt", PrivateKeyJWT(settings, dbs, address=lambda: flask_request.remote_addr)
        )
        from smart_auth.introspection import SmartIntrospectionEndpoint
        from smart_auth.revocation import SmartRevocationEndpoint

        self.register_endpoint(SmartRevocationEndpoint)
        self.register_endpoint(SmartIntrospectionEndpoint)
        # Authlib's own parser fails with a 500 on a non-UTF-8 Basic header.
        self.register_client_auth_method("client_secret_basic", _authenticate_client_secret_basic)

    # -- Authlib hooks -------------------------------------------------------------
    def query_client(self, client_id: str) -> SmartClient | None:
        row = clients.get_client(dbs(), client_id)
        return SmartClient(row) if row is not None else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        grant_type = request.payload.grant_type if request.payload else None
        user = request.user.user if isinstance(request.user, Decision) else request.user
        security_event(
            dbs(),
            subtype="token-refresh" if grant_type == "refresh_token" else "token-issue",
            outcome="0",
            user_id=getattr(user, "id", None),
            client_id=request.client.get_client_id() if request.client else None,
            address=flask_request.remote_addr,
            description=f"access token issued ({grant_type})",
        )

    def validate_requested_scope(self, scope: str | None) -> None:
        if not scope or not scope.strip():
            raise InvalidScopeError("Missing 'scope'.")
        try:
            validate_requested(scope)
        except ScopeError:
            raise InvalidScopeError("Malformed scope.") from None

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, dict):
            return DictOAuth2Request(self.settings.base_url.rstrip("/") + "/auth/authorize", request)
        return super().create_oauth2_request(request)

    # -- used by the views ---------------------------------------------------------
    def authorize_url(self) -> str:
        return self.settings.base_url.rstrip("/") + "/auth/authorize"


def _token_response(
    settings: Settings,
    *,
    user: UserAccount,
    client_id: str,
    scope: str,
    ctx: TokenContext,
) -> dict[str, Any]:
    """The JSON of a successful token response (the refresh token row is written here)."""
    access = tokens.issue_access_token(
        settings, user=user, client_id=client_id, scope=scope, grant_id=ctx.grant_id, patient=ctx.patient
    )
    grants.note_issue(dbs(), ctx.grant_id)
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": min(settings.access_token_seconds, tokens.MAX_LIFETIME),
        "scope": scope,
    }
    if ctx.patient:
        body["patient"] = ctx.patient
    body.update(ctx.extra)
    if "openid" in scope.split():
        body["id_token"] = tokens.issue_id_token(
            settings,
            user=user,
            client_id=client_id,
            nonce=ctx.nonce,
            auth_time=ctx.auth_time,
            sid=ctx.login_id,
            with_fhir_user="fhirUser" in scope.split(),
        )
    if ctx.refresh_scope is not None:
        body["refresh_token"] = refresh_tokens.create(
            dbs(),
            refresh_tokens.RefreshGrant(
                grant_id=ctx.grant_id,
                client_id=client_id,
                user_id=user.id,
                scope=ctx.refresh_scope,
                launch_patient=ctx.refresh_patient,
                expires_at=ctx.refresh_expires_at,
            ),
        )
    return body


def _revoke_replayed(row: Any, reason: str, subtype: str, what: str) -> None:
    """Someone holds a copy of a code or refresh token: end its grant and audit a serious failure."""
    if row.grant_id:
        grants.revoke(dbs(), row.grant_id, reason)
    security_event(
        dbs(),
        subtype=subtype,
        outcome="8",
        user_id=row.user_id,
        client_id=row.client_id,
        address=flask_request.remote_addr,
        description=f"{what}: its grant was revoked",
    )


def _active_user(user_id: str) -> UserAccount | None:
    user = dbs().get(UserAccount, user_id)
    return user if user is not None and user.active else None


def _validate_launch(payload: Any, redirect_uri: str) -> None:
    """EHR launch (A10): a ``launch`` parameter must name a live launch of this client and come
    with the ``launch`` scope (without the parameter, that scope is just not granted). Which
    user may use it is checked once someone is signed in (``smart_auth.authorize_views``)."""
    value = payload.data.get("launch")
    wants_scope = scope_policy.LAUNCH in (payload.scope or "").split()
    problem = None
    if value is not None and not wants_scope:
        problem = "A 'launch' parameter needs the 'launch' scope."
    elif value is not None and launch.find_live(dbs(), value, payload.client_id) is None:
        problem = "The launch is unknown, expired or already used."
    if problem:
        raise InvalidRequestError(problem, redirect_uri=redirect_uri, state=payload.state)


class SmartCodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS

    @property
    def settings(self) -> Settings:
        return self.server.settings  # type: ignore[no-any-return]

    def validate_authorization_request(self) -> str:
        payload = self.request.payload
        if not payload.redirect_uri:
            raise InvalidRequestError("Missing 'redirect_uri'.")
        if payload.data.get("aud") != self.settings.fhir_base:
            # No redirect: a wrong aud may mean the app was sent here by someone else.
            raise InvalidRequestError("'aud' must be this server's FHIR base URL.")
        redirect_uri = super().validate_authorization_request()
        if not payload.state:
            raise InvalidRequestError("Missing 'state'.", redirect_uri=redirect_uri)
        if len(payload.data.get("nonce") or "") > 255:
            raise InvalidRequestError("'nonce' is too long.", redirect_uri=redirect_uri, state=payload.state)
        _validate_launch(payload, redirect_uri)
        return redirect_uri  # type: ignore[no-any-return]

    def generate_authorization_code(self) -> str:
        return codes.new_value()

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        decision: Decision = request.user
        data = request.payload.data
        codes.store(
            dbs(),
            code,
            codes.NewCode(
                client_id=request.client.get_client_id(),
                user_id=decision.user.id,
                redirect_uri=request.payload.redirect_uri,
                scope=" ".join(decision.scopes),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                launch_patient=decision.patient,
                auth_time=decision.auth_time,
                nonce=data.get("nonce"),
                login_id=decision.login_id,
                ehr_launch=decision.ehr_launch,
            ),
        )

    def query_authorization_code(self, code: str, client: SmartClient) -> Any:
        row = codes.find(dbs(), code)
        if row is None or row.client_id != client.get_client_id():
            return None
        if row.used:
            # A replayed code: revoke what it produced, access tokens included (RFC 6749 §4.1.2).
            _revoke_replayed(row, "code-replay", "token-issue", "authorization code replayed")
            return None
        if not codes.is_live(row):
            return None
        return StoredCode(row)

    def delete_authorization_code(self, authorization_code: Any) -> None:
        return None  # claimed (flagged used) in create_token_response

    def authenticate_user(self, authorization_code: Any) -> UserAccount | None:
        return _active_user(authorization_code.row.user_id)

    def create_token_response(self) -> Any:
        stored: StoredCode = self.request.authorization_code
        row = stored.row
        grant_id = grants.new_id()
        if not codes.claim(dbs(), row, grant_id):
            raise InvalidGrantError("Invalid 'code' in request.")
        grants.create(
            dbs(),
            grant_id=grant_id,
            user_id=row.user_id,
            client_id=row.client_id,
            scope=row.scope,
            login_id=row.login_id,
        )
        self._grant_id = grant_id
        return super().create_token_response()

    def generate_token(
        self,
        user: Any = None,
        scope: Any = None,
        grant_type: Any = None,
        expires_in: Any = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        row = self.request.authorization_code.row
        granted = row.scope.split()
        ctx = TokenContext(
            grant_id=self._grant_id,
            patient=row.launch_patient if scope_policy.needs_patient(granted) else None,
            nonce=row.nonce,
            auth_time=row.auth_time or None,
            login_id=row.login_id,
        )
        if row.ehr_launch:
            ctx.extra.update(launch.token_response_context(self.settings))
        if include_refresh_token and scope_policy.wants_refresh(granted):
            ctx.refresh_scope = row.scope
            ctx.refresh_patient = ctx.patient
            ctx.refresh_expires_at = refresh_tokens.expiry_for(self.settings, row.scope)
        return _token_response(self.settings, user=user, client_id=row.client_id, scope=row.scope, ctx=ctx)


class StoredCode:
    """Authlib's view of an ``oauth_code`` row."""

    def __init__(self, row: Any) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri  # type: ignore[no-any-return]

    def get_scope(self) -> str:
        return self.row.scope  # type: ignore[no-any-return]

    def get_nonce(self) -> str | None:
        return self.row.nonce  # type: ignore[no-any-return]

    def get_auth_time(self) -> int:
        return self.row.auth_time  # type: ignore[no-any-return]


class StoredRefresh:
    """Authlib's view of an ``oauth_refresh_token`` row."""

    def __init__(self, row: RefreshToken) -> None:
        self.row = row

    def check_client(self, client: SmartClient) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope


class SmartRefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def settings(self) -> Settings:
        return self.server.settings  # type: ignore[no-any-return]

    def authenticate_refresh_token(self, refresh_token: str) -> StoredRefresh | None:
        row = refresh_tokens.find(dbs(), refresh_token)
        if row is None:
            return None
        if row.revoked:
            # Rotation means a revoked token is never presented by its rightful owner.
            _revoke_replayed(row, "refresh-replay", "token-refresh", "revoked refresh token replayed")
            return None
        grant = grants.get(dbs(), row.grant_id)
        if not refresh_tokens.is_live(row) or grant is None or grant.revoked_at is not None:
            return None
        return StoredRefresh(row)

    def _validate_token_scope(self, token: StoredRefresh) -> None:
        scope = self.request.payload.scope
        if not scope:
            return
        try:
            requested = validate_requested(scope)
        except ScopeError:
            raise InvalidScopeError("Malformed scope.") from None
        original = token.row.scope.split()
        if not requested or not all(scope_policy.covers(original, s) for s in requested):
            raise InvalidScopeError("The scope may only narrow the original grant.")

    def authenticate_user(self, refresh_token: StoredRefresh) -> UserAccount | None:
        return _active_user(refresh_token.row.user_id)

    def revoke_old_credential(self, refresh_token: StoredRefresh) -> None:
        return None  # revoked by the claim in create_token_response

    def create_token_response(self) -> Any:
        stored: StoredRefresh = self.request.refresh_token
        if not refresh_tokens.claim(dbs(), stored.row):
            raise InvalidGrantError()
        return super().create_token_response()

    def issue_token(self, user: UserAccount, refresh_token: StoredRefresh) -> dict[str, Any]:
        row = refresh_token.row
        scope = " ".join((self.request.payload.scope or row.scope).split())
        grant = grants.get(dbs(), row.grant_id)
        ctx = TokenContext(
            grant_id=row.grant_id or "",
            patient=row.launch_patient if scope_policy.needs_patient(scope.split()) else None,
            login_id=grant.login_id if grant else None,
        )
        # RFC 6749 §6: the new refresh token carries the original grant, whatever was narrowed.
        ctx.refresh_scope = row.scope
        ctx.refresh_patient = row.launch_patient
        ctx.refresh_expires_at = refresh_tokens.expiry_for(self.settings, row.scope, inherited=row.expires_at)
        return _token_response(self.settings, user=user, client_id=row.client_id, scope=scope, ctx=ctx)

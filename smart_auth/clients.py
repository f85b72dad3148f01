"""OAuth client registrations (table ``oauth_client``).

A client with a secret is confidential (``client_secret_basic`` or
``client_secret_post`` at the token endpoint); one without is public (``none``, and
PKCE is its only proof). Secrets are stored as SHA-256 hashes. Registration is
idempotent so that seeding and deployment scripts can run it on every start.

A backend service (SMART Backend Services, :func:`register_backend_client`) is another
kind of confidential client: no redirect URI and no secret, only ``client_credentials``
with ``private_key_jwt``, ``system/`` scopes, and public keys by URL or inline
(``smart_auth.client_jwks``). Each registration grants only what its kind needs
(never implicit or password).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhirserver.core.scopes import ScopeError, parse_scope, validate_requested
from smart_auth.client_jwks import JwksError, check_jwks, check_jwks_url
from smart_auth.hashing import same_hash, sha256_hex, utcnow
from smart_auth.models import OAuthClient

CLIENT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
GRANT_TYPES = frozenset({"authorization_code", "refresh_token", "client_credentials"})
# What an app (a client with redirect URIs) may use; client_credentials is for backend services only.
APP_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
BACKEND_AUTH_METHOD = "private_key_jwt"


class ClientError(ValueError):
    """A registration is malformed; the message names the field, never a secret."""


def _check_redirect_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise ClientError("redirect URIs must be absolute http(s) URLs without a fragment")
    return uri


def register_client(
    session: Session,
    *,
    client_id: str,
    name: str,
    redirect_uris: Iterable[str],
    scope: str,
    secret: str | None = None,
    first_party: bool = False,
    grant_types: Iterable[str] = ("authorization_code", "refresh_token"),
    resource_server: bool = False,
    launch_url: str | None = None,
) -> OAuthClient:
    """Create the client, or update it in place when ``client_id`` exists. The caller commits.

    A ``resource_server`` (it must be confidential) may introspect any token (RFC 7662);
    other confidential clients introspect only their own. A ``launch_url`` makes the app
    launchable from the provider console (SMART EHR launch, ``smart_auth.launch``); its
    allowance must then include the ``launch`` scope.
    """
    _check_client_id(client_id)
    uris = [_check_redirect_uri(u) for u in redirect_uris]
    if not uris:
        raise ClientError("at least one redirect URI is required")
    if resource_server and not secret:
        raise ClientError("a resource server must be a confidential client (it authenticates to introspect)")
    grants = list(dict.fromkeys(grant_types))
    if not grants or not set(grants) <= APP_GRANT_TYPES:
        raise ClientError("grant_types may only be authorization_code and refresh_token")
    try:
        validate_requested(scope)
    except ScopeError as exc:
        raise ClientError(f"scope: {exc}") from exc
    client = session.get(OAuthClient, client_id)
    if client is None:
        client = OAuthClient(client_id=client_id, created_at=utcnow())
        session.add(client)
    client.name = (name or client_id)[:200]
    client.redirect_uris = json.dumps(uris)
    client.scope = " ".join(scope.split())
    client.grant_types = json.dumps(grants)
    client.first_party = first_party
    client.resource_server = resource_server
    client.jwks_url = None
    client.jwks = None
    client.launch_url = _check_launch_url(launch_url, scope) if launch_url is not None else None
    if secret:
        client.client_secret_hash = sha256_hex(secret)
        client.token_endpoint_auth_method = "client_secret_basic"  # noqa: S105 - a method name
    else:
        client.client_secret_hash = None
        client.token_endpoint_auth_method = "none"  # noqa: S105 - a method name
    session.flush()
    return client


def _check_launch_url(url: str, scope: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or len(url) > 2000:
        raise ClientError("the launch URL must be an absolute http(s) URL without a fragment")
    if "launch" not in scope.split():
        raise ClientError("an app with a launch URL needs the 'launch' scope in its allowance")
    return url


def _check_client_id(client_id: str) -> None:
    if not client_id or len(client_id) > 100 or not set(client_id) <= CLIENT_ID_CHARS:
        raise ClientError("client_id must be 1-100 URL-safe characters")


def check_system_scope(scope: str) -> str:
    """A backend client's allowance: one or more ``system/`` resource scopes, nothing else."""
    words = scope.split()
    if not words:
        raise ClientError("scope: a backend client needs system/ scopes")
    for word in words:
        try:
            rs = parse_scope(word)
        except ScopeError as exc:
            raise ClientError(f"scope: {exc}") from exc
        if rs is None or rs.context != "system":
            raise ClientError(f"scope: a backend client may hold only system/ scopes, not {word!r}")
    return " ".join(words)


def register_backend_client(
    session: Session,
    *,
    client_id: str,
    name: str,
    scope: str,
    jwks_url: str | None = None,
    jwks: str | dict[str, object] | None = None,
) -> OAuthClient:
    """Create or update a backend-service client (``client_credentials`` + ``private_key_jwt``).

    Exactly one of ``jwks_url`` (the client's published JWKS) and ``jwks`` (its public
    keys, stored here) is given. The caller commits.
    """
    _check_client_id(client_id)
    if (jwks_url is None) == (jwks is None):
        raise ClientError("a backend client needs exactly one of a JWKS URL and an inline JWKS")
    try:
        url = check_jwks_url(jwks_url) if jwks_url is not None else None
        inline = json.dumps(check_jwks(jwks), separators=(",", ":")) if jwks is not None else None
    except JwksError as exc:
        raise ClientError(str(exc)) from exc
    allowance = check_system_scope(scope)
    client = session.get(OAuthClient, client_id)
    if client is None:
        client = OAuthClient(client_id=client_id, created_at=utcnow())
        session.add(client)
    client.name = (name or client_id)[:200]
    client.redirect_uris = "[]"
    client.scope = allowance
    client.grant_types = json.dumps(["client_credentials"])
    client.first_party = False
    client.resource_server = False
    client.client_secret_hash = None
    client.token_endpoint_auth_method = BACKEND_AUTH_METHOD
    client.jwks_url = url
    client.jwks = inline
    client.launch_url = None
    session.flush()
    return client


def is_backend(client: OAuthClient) -> bool:
    """A backend service: authenticates with a signed assertion (private_key_jwt) only."""
    return client.token_endpoint_auth_method == BACKEND_AUTH_METHOD


def get_client(session: Session, client_id: str | None) -> OAuthClient | None:
    # A NUL matches no registered id, and PostgreSQL refuses it as a query parameter (a 500).
    if not client_id or len(client_id) > 100 or "\x00" in client_id:
        return None
    return session.execute(select(OAuthClient).where(OAuthClient.client_id == client_id)).scalar_one_or_none()


def redirect_uris(client: OAuthClient) -> list[str]:
    try:
        value = json.loads(client.redirect_uris or "[]")
    except ValueError:
        return []
    return [u for u in value if isinstance(u, str)]


def grant_types(client: OAuthClient) -> list[str]:
    try:
        value = json.loads(client.grant_types or "[]")
    except ValueError:
        return []
    return [g for g in value if isinstance(g, str)]


def is_public(client: OAuthClient) -> bool:
    return not client.client_secret_hash and not is_backend(client)


def check_secret(client: OAuthClient, secret: str) -> bool:
    return bool(secret) and same_hash(secret, client.client_secret_hash)


def origin_of(uri: str) -> str | None:
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. "https://[::1" (an unclosed IPv6 literal)
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def registered_origins(session: Session) -> set[str]:
    """Origins of every registered redirect URI (where logout may send the browser back)."""
    out: set[str] = set()
    for client in session.execute(select(OAuthClient)).scalars():
        for uri in redirect_uris(client):
            origin = origin_of(uri)
            if origin:
                out.add(origin)
    return out

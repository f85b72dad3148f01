"""SMART Backend Services: ``client_credentials`` with ``private_key_jwt`` client authentication.

A backend service (another system, no user) proves who it is with a JWT it signs with its
own private key (RFC 7523 §2.2, the "client assertion") and receives a short-lived
access token for ``system/`` scopes. Authlib's ``JWTBearerClientAssertion`` parses the
assertion but leaves the SMART rules to us (docs/security.md, D3 and D5), so
:class:`PrivateKeyJWT` checks all of them itself, each failure a 401 ``invalid_client``
with an ``error_description``:

- the algorithm is RS384 or ES384, named in the header: never ``none``, never an HMAC
  (which would take the client's *public* key as its secret);
- ``iss`` = ``sub`` = a registered backend client, ``aud`` = our token endpoint URL;
- the header's ``kid`` names a key of the client's JWKS whose type fits the algorithm
  (RSA for RS384, EC P-384 for ES384), and that key verifies the signature;
- a ``jku`` header, if any, is exactly the registered JWKS URL (never fetched otherwise);
- ``exp`` is present, not past, and at most five minutes ahead (plus a small clock skew);
- ``jti`` is present and used once (``smart_auth.assertion_replay``).

The grant (:class:`SmartClientCredentialsGrant`) then grants the requested ``system/``
scopes narrowed to the client's registration. Any other scope (``patient/``, ``user/``,
``openid``...) is refused as ``invalid_scope`` rather than dropped, and so is a request of
which nothing lies inside the registration. Tokens live at most
:data:`SYSTEM_TOKEN_SECONDS`, carry ``role`` = ``system`` and no ``fhirUser``, come with no
refresh token, and belong to a grant of their own (``smart_auth.grants``) so that RFC 7009
revocation and introspection work for them as for every other token.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidScopeError, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.audit import security_event
from fhirserver.core.scopes import ScopeError, parse_scope
from smart_auth import assertion_replay, client_jwks, clients, grants, scope_policy, tokens
from smart_auth.hashing import utcnow
from smart_auth.web_support import dbs

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_METHOD = "private_key_jwt"
ALGORITHMS = ("RS384", "ES384")
KEY_TYPES = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}
MAX_ASSERTION_SECONDS = 300  # exp at most five minutes ahead (SMART Backend Services)
CLOCK_SKEW = 30  # tolerated between the client's clock and ours, on exp's upper bound and iat
SYSTEM_TOKEN_SECONDS = 300  # backend tokens live at most five minutes (checklist B11, D4)
MAX_ASSERTION_LENGTH = 16384


def token_endpoint(settings: Settings) -> str:
    """The one ``aud`` a client assertion may carry (SMART: the token endpoint URL)."""
    return settings.base_url.rstrip("/") + "/auth/token"


def _refuse(description: str) -> InvalidClientError:
    return InvalidClientError(status_code=401, description=description)


def _header_and_claims(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified header and payload, only to find the client and its key."""
    if len(assertion) > MAX_ASSERTION_LENGTH or assertion.count(".") != 2:
        raise _refuse("The client assertion is not a compact JWS.")
    try:
        obj = jws.extract_compact(assertion.encode("ascii"))
        claims = json.loads(obj.payload)
        header = dict(obj.headers())
    except (JoseError, ValueError, UnicodeError, TypeError):
        raise _refuse("The client assertion is not a compact JWS.") from None
    if not isinstance(claims, dict):
        raise _refuse("The client assertion's payload is not a JSON object.")
    return header, claims


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(f"The client assertion's '{name}' is not a number.")
    return value


def _verifying_key(keys: list[dict[str, Any]], kid: str, alg: str) -> RSAKey | ECKey:
    matching = [k for k in keys if k.get("kid") == kid]
    if not matching:
        raise _refuse("The client assertion's 'kid' names no registered key.")
    key = matching[0]
    kty, crv = KEY_TYPES[alg]
    if key.get("kty") != kty or (crv is not None and key.get("crv") != crv):
        raise _refuse(f"The key named by 'kid' does not fit the algorithm {alg}.")
    if key.get("alg") not in (None, alg):
        raise _refuse(f"The key named by 'kid' is registered for another algorithm than {alg}.")
    try:
        return RSAKey.import_key(key) if kty == "RSA" else ECKey.import_key(key)
    except (JoseError, ValueError, TypeError):
        raise _refuse("The key named by 'kid' cannot be used.") from None


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """Client authentication by a signed assertion (``private_key_jwt``), with every SMART check.

    Registered on the authorization server as the ``private_key_jwt`` method; Authlib calls
    it with ``(query_client, request)`` and expects the client, or None when the request
    does not use this method (then another method may apply, or Authlib answers 400).
    """

    CLIENT_ASSERTION_TYPE = ASSERTION_TYPE
    CLIENT_AUTH_METHOD = AUTH_METHOD

    def __init__(
        self,
        settings: Settings,
        session: Callable[[], Session],
        cache: client_jwks.JwksCache = client_jwks.CACHE,
        address: Callable[[], str | None] = lambda: None,
    ) -> None:
        super().__init__(validate_jti=True, leeway=0)
        self.settings = settings
        self.session = session
        self.cache = cache
        self.address = address

    def get_audiences(self) -> list[str]:
        return [token_endpoint(self.settings)]

    def __call__(self, query_client: Callable[[str], Any], request: OAuth2Request) -> Any:
        data = request.form
        assertion_type = data.get("client_assertion_type")
        assertion = data.get("client_assertion")
        if not assertion_type and not assertion:
            return None  # not this method
        if assertion_type != ASSERTION_TYPE:
            raise _refuse(f"'client_assertion_type' must be {ASSERTION_TYPE}.")
        if not isinstance(assertion, str) or not assertion:
            raise _refuse("Missing 'client_assertion'.")
        header, claims = _header_and_claims(assertion)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _refuse("The client assertion must be signed with RS384 or ES384.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refuse("The client assertion's header needs a 'kid'.")
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str) or not sub:
            raise _refuse("The client assertion needs 'iss' and 'sub' (the client_id).")
        if iss != sub:
            raise _refuse("The client assertion's 'iss' and 'sub' must both be the client_id.")
        client = query_client(sub)
        if client is None or not clients.is_backend(client.row):
            raise _refuse("Unknown backend client.")
        jku = header.get("jku")
        if jku is not None and (not client.row.jwks_url or jku != client.row.jwks_url):
            raise _refuse("The client assertion's 'jku' is not the registered JWKS URL.")
        try:
            keys = client_jwks.keys_of(client.row.jwks_url, client.row.jwks, self.cache)
        except client_jwks.JwksError as exc:
            raise _refuse(f"The client's keys are unavailable: {exc}.") from None
        key = _verifying_key(keys, kid, alg)
        try:
            jws.deserialize_compact(assertion.encode("ascii"), key, algorithms=[alg])
        except JoseError:
            raise _refuse("The client assertion's signature does not verify.") from None
        self.check_claims(claims, client.get_client_id())
        request.client = client
        return self.authenticate_client(client)

    def check_claims(self, claims: dict[str, Any], client_id: str) -> None:
        """exp, iat, aud and jti of a verified assertion (Authlib's checks are replaced, not added to)."""
        now = int(time.time())
        exp = _int_claim(claims, "exp")
        if exp is None:
            raise _refuse("The client assertion needs an 'exp'.")
        if exp <= now:
            raise _refuse("The client assertion has expired.")
        if exp > now + MAX_ASSERTION_SECONDS + CLOCK_SKEW:
            raise _refuse("The client assertion's 'exp' is more than five minutes ahead.")
        iat = _int_claim(claims, "iat")
        if iat is not None and iat > now + CLOCK_SKEW:
            raise _refuse("The client assertion was issued in the future.")
        nbf = _int_claim(claims, "nbf")
        if nbf is not None and nbf > now + CLOCK_SKEW:
            raise _refuse("The client assertion is not valid yet.")
        aud = claims.get("aud")
        audience = token_endpoint(self.settings)
        if aud != audience and aud != [audience]:
            raise _refuse("The client assertion's 'aud' must be the token endpoint URL.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > assertion_replay.MAX_JTI_LENGTH:
            raise _refuse("The client assertion needs a 'jti' (at most 255 characters).")
        if not assertion_replay.remember(self.session(), client_id, jti, exp, utcnow()):
            security_event(
                self.session(),
                subtype="token-issue",
                outcome="8",
                client_id=client_id,
                address=self.address(),
                description="client assertion replayed (jti used before)",
            )
            raise _refuse("The client assertion's 'jti' was used before.")

    def authenticate_client(self, client: Any) -> Any:
        if client.check_endpoint_auth_method(AUTH_METHOD, "token"):
            return client
        raise _refuse(f"The client cannot authenticate with method: {AUTH_METHOD}")


def granted_scope(requested: str | None, allowance: str) -> str:
    """The ``system/`` scopes of ``requested`` narrowed to the client's registered ``allowance``.

    Anything but a ``system/`` resource scope is ``invalid_scope``, and so is a request of
    which nothing lies inside the allowance; partly covered scopes are narrowed (as for apps).
    """
    words = (requested or "").split()
    if not words:
        raise InvalidScopeError("Missing 'scope'.")
    for word in words:
        try:
            rs = parse_scope(word)
        except ScopeError:
            raise InvalidScopeError("Malformed scope.") from None
        if rs is None or rs.context != "system":
            raise InvalidScopeError("Backend services may ask for system/ scopes only.")
    granted = scope_policy.for_client(words, allowance)
    if not granted:
        raise InvalidScopeError("None of the requested scopes is registered for this client.")
    return " ".join(granted)


def token_lifetime(settings: Settings, lifetime: int | None = None) -> int:
    """At most five minutes, and never above the configured access-token lifetime."""
    return min(lifetime or SYSTEM_TOKEN_SECONDS, SYSTEM_TOKEN_SECONDS, tokens.max_lifetime(settings))


def issue_system_token(
    session: Session, settings: Settings, *, client_id: str, scope: str, lifetime: int | None = None
) -> tuple[str, int]:
    """A grant of its own and a ``system`` access token from it: (token, expires_in).

    ``sub`` is the client itself; the grant names the client as its "user", so that the
    resource server's system check (``smart_auth.resource_server``) finds it.
    """
    seconds = token_lifetime(settings, lifetime)
    grant = grants.create_system(session, client_id=client_id, scope=scope)
    now = int(time.time())
    claims = {
        "iss": tokens.issuer(settings),
        "sub": client_id,
        "aud": settings.fhir_base,
        "client_id": client_id,
        "scope": " ".join(scope.split()),
        "exp": now + seconds,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "gid": grant.id,
        "role": "system",
    }
    return tokens.sign(settings, claims), seconds


class SmartClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """``grant_type=client_credentials`` for backend clients authenticated by :class:`PrivateKeyJWT`."""

    TOKEN_ENDPOINT_AUTH_METHODS = [AUTH_METHOD]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        self._granted = granted_scope(self.request.payload.scope, self.request.client.row.scope)

    def generate_token(
        self,
        user: Any = None,
        scope: Any = None,
        grant_type: Any = None,
        expires_in: Any = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        client_id = self.request.client.get_client_id()
        access, seconds = issue_system_token(dbs(), self.server.settings, client_id=client_id, scope=self._granted)
        return {"access_token": access, "token_type": "Bearer", "expires_in": seconds, "scope": self._granted}

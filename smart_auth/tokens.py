"""Access tokens: RS256 JWTs signed with the server's key, and their verification.

The claims are the contract of docs/architecture.md: ``iss`` = {base}/auth,
``sub`` = user account id, ``aud`` = {base}/fhir, ``client_id``, ``scope``, ``exp``,
``iat``, ``jti``, ``gid`` (the grant, ``smart_auth.grants``), ``role``, ``fhirUser`` and
``patient`` (when present). Tokens are signed by the signing key of the key ring
(``smart_auth.signing_keys``: several configured keys with key ids, rotated by time) and
verified with the published key their ``kid`` names; a token without a kid, or naming an
unknown or retired key, is invalid. Verification accepts RS256 only (no ``none``, no
HMAC confusion) and checks the signature, issuer, audience, expiry, a lifetime
(``exp - iat``) no longer than the configured maximum, and a ``nbf`` not in the future:
even a token signed with our own key is refused when its times are out of bounds.
Whether the grant still stands is checked per request by ``smart_auth.resource_server``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from fhirserver.config import Settings
from fhirserver.core.ports import TokenRejected
from smart_auth import signing_keys
from smart_auth.models import UserAccount

ALG = signing_keys.ALG
# A key stays published this long after it stopped signing (signing_keys.MAX_TOKEN_LIFETIME).
MAX_LIFETIME = signing_keys.MAX_TOKEN_LIFETIME
# Clock skew tolerated for ``iat`` between app instances.
LEEWAY_SECONDS = signing_keys.CLOCK_SKEW_SECONDS


class InvalidToken(TokenRejected):
    """The token must not be accepted; ``str(exc)`` is a short reason safe to return."""


@dataclass(frozen=True)
class SigningKey:
    key: RSAKey
    kid: str


def signing_key(settings: Settings) -> SigningKey:
    """The key that signs now (the ring's signer)."""
    signer = signing_keys.key_ring(settings).signer
    return SigningKey(signer.key, signer.kid)


def _verification_key(token: str, settings: Settings) -> RSAKey:
    """The published key the token's ``kid`` names (read before the signature is checked)."""
    try:
        header = jws.extract_compact(token.encode("ascii")).protected  # parsed only, not trusted yet
    except (JoseError, ValueError, TypeError, UnicodeError):
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")
    found = signing_keys.key_ring(settings).verifier(header.get("kid"))
    if found is None:
        raise InvalidToken("unknown key")
    return found.key


def sign(settings: Settings, claims: dict[str, Any]) -> str:
    """Sign ``claims`` as a JWT with the server's signing key (every token we issue goes through here)."""
    sk = signing_key(settings)
    return jwt.encode({"alg": ALG, "kid": sk.kid, "typ": "JWT"}, claims, sk.key, algorithms=[ALG])


def issuer(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/auth"


def jwks(settings: Settings) -> dict[str, Any]:
    """The public JWKS published at /auth/jwks: the signing key, the next and the retiring ones."""
    return signing_keys.jwks(settings)


def issue_access_token(
    settings: Settings,
    *,
    user: UserAccount,
    client_id: str,
    scope: str,
    grant_id: str,
    patient: str | None = None,
    lifetime: int | None = None,
) -> str:
    """Sign an access token of grant ``grant_id`` for ``user``; ``lifetime`` is capped by settings
    and by one hour."""
    seconds = min(lifetime or settings.access_token_seconds, max_lifetime(settings))
    if seconds <= 0:
        raise ValueError("lifetime must be positive")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer(settings),
        "sub": user.id,
        "aud": settings.fhir_base,
        "client_id": client_id,
        "scope": " ".join(scope.split()),
        "exp": now + seconds,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "gid": grant_id,
        "role": user.role,
    }
    if user.fhir_user:
        claims["fhirUser"] = user.fhir_user
    if patient:
        claims["patient"] = patient
    return sign(settings, claims)


def issue_id_token(
    settings: Settings,
    *,
    user: UserAccount,
    client_id: str,
    nonce: str | None = None,
    auth_time: int | None = None,
    sid: str | None = None,
    with_fhir_user: bool = True,
) -> str:
    """An OpenID Connect id_token (SMART ``openid fhirUser``): who signed in, for this client only.

    ``fhirUser`` is included only when the grant has the ``fhirUser`` scope (``with_fhir_user``):
    a user who unticked it at consent does not hand the app their FHIR identity.

    ``fhirUser`` is an absolute URL here (SMART App Launch §scopes: openid), unlike the access
    token's relative reference, which the FHIR server itself reads. ``sid`` names the
    sign-in (OIDC's session id): a first-party client ends that sign-in with it at logout.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer(settings),
        "sub": user.id,
        "aud": client_id,
        "exp": now + min(settings.access_token_seconds, MAX_LIFETIME),
        "iat": now,
    }
    if nonce:
        claims["nonce"] = nonce
    if auth_time:
        claims["auth_time"] = auth_time
    if sid:
        claims["sid"] = sid
    if user.fhir_user and with_fhir_user:
        claims["fhirUser"] = f"{settings.fhir_base}/{user.fhir_user}"
    return sign(settings, claims)


def lifetime_of(token_claims: dict[str, Any]) -> int:
    return int(token_claims["exp"]) - int(token_claims["iat"])


def max_lifetime(settings: Settings) -> int:
    """The longest an access token may live: the configured lifetime, never above one hour."""
    return min(settings.access_token_seconds, MAX_LIFETIME)


def verify_signature(token: str, settings: Settings) -> dict[str, Any]:
    """The claims of a token signed by us (RS256, our key id), with every required claim present.

    Time-independent, so a process may cache the result per token; :func:`check_times`
    must still run on every use.
    """
    if not isinstance(token, str) or not token or len(token) > 8192 or token.count(".") != 2:
        raise InvalidToken("malformed token")
    key = _verification_key(token, settings)
    try:
        decoded = jwt.decode(token, key, algorithms=[ALG])
    except JoseError as exc:
        name = type(exc).__name__
        if name == "BadSignatureError":
            raise InvalidToken("bad signature") from None
        if name in ("UnsupportedAlgorithmError", "MissingAlgorithmError"):
            raise InvalidToken("unsupported algorithm") from None
        raise InvalidToken("malformed token") from None
    except (ValueError, TypeError):
        raise InvalidToken("malformed token") from None
    header, claims = decoded.header, decoded.claims
    if header.get("alg") != ALG:
        raise InvalidToken("unsupported algorithm")
    for name in ("iss", "sub", "aud", "exp", "iat", "client_id", "scope", "role", "gid"):
        if name not in claims:
            raise InvalidToken("missing claims")
    for name in ("exp", "iat", "nbf"):
        if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int)):
            raise InvalidToken("malformed token")
    if claims["iss"] != issuer(settings):
        raise InvalidToken("wrong issuer")
    aud = claims["aud"]
    if aud != settings.fhir_base and not (isinstance(aud, list) and aud == [settings.fhir_base]):
        raise InvalidToken("wrong audience")
    if claims["exp"] - claims["iat"] > max_lifetime(settings):
        raise InvalidToken("token lifetime too long")
    return dict(claims)


def check_times(claims: dict[str, Any], now: int | None = None) -> None:
    """Expiry, issue time and not-before against the clock (run on every use of a token)."""
    now = int(time.time()) if now is None else now
    if claims["exp"] <= now:  # no leeway: the same server issues and checks
        raise InvalidToken("token expired")
    if claims["iat"] > now + LEEWAY_SECONDS:
        raise InvalidToken("token issued in the future")
    if "nbf" in claims and claims["nbf"] > now + LEEWAY_SECONDS:
        raise InvalidToken("token not valid yet")


def verify_access_token(token: str, settings: Settings) -> dict[str, Any]:
    """Return the claims of a valid access token or raise InvalidToken with a short reason.

    This checks the token alone; whether its grant still stands is the resource server's
    per-request check (``smart_auth.resource_server``).
    """
    claims = verify_signature(token, settings)
    check_times(claims)
    return claims


def verify_id_token_hint(token: str, settings: Settings, client_id: str) -> dict[str, Any]:
    """The claims of an id_token we issued to ``client_id`` (OIDC ``id_token_hint``).

    As OpenID Connect RP-Initiated Logout allows, an expired id_token is still a good hint:
    it proves which sign-in the client means, and the client authenticates besides.
    """
    if not isinstance(token, str) or not token or len(token) > 8192 or token.count(".") != 2:
        raise InvalidToken("malformed token")
    try:
        decoded = jwt.decode(token, _verification_key(token, settings), algorithms=[ALG])
    except (JoseError, ValueError, TypeError, InvalidToken):
        raise InvalidToken("bad id_token") from None
    claims = decoded.claims
    if decoded.header.get("alg") != ALG or claims.get("iss") != issuer(settings) or claims.get("aud") != client_id:
        raise InvalidToken("bad id_token")
    if not isinstance(claims.get("sid"), str) or not isinstance(claims.get("sub"), str):
        raise InvalidToken("bad id_token")
    return dict(claims)

"""Access tokens: RS256 JWTs signed with the server's key, and their verification.

The claims are the contract of docs/architecture.md: ``iss`` = {base}/auth,
``sub`` = user account id, ``aud`` = {base}/fhir, ``client_id``, ``scope``, ``exp``,
``iat``, ``jti``, ``role``, ``fhirUser`` and ``patient`` (when present). The key id is
the RFC 7638 thumbprint of the public key, so it changes exactly when the key does.
Verification accepts RS256 only (no ``none``, no HMAC confusion) and checks the
signature, expiry, issuer and audience.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from fhirserver.config import Settings
from smart_auth.models import UserAccount

ALG = "RS256"
MAX_LIFETIME = 3600
# Clock skew tolerated for ``iat`` between app instances.
LEEWAY_SECONDS = 30


class InvalidToken(Exception):
    """The token must not be accepted; ``str(exc)`` is a short reason safe to return."""


@dataclass(frozen=True)
class SigningKey:
    key: RSAKey
    kid: str


@lru_cache(maxsize=4)
def _load(pem: str) -> SigningKey:
    key = RSAKey.import_key(pem)
    return SigningKey(key, key.thumbprint())


def signing_key(settings: Settings) -> SigningKey:
    if not settings.jwt_private_key_pem:
        raise RuntimeError("JWT_PRIVATE_KEY_PEM is not configured")
    return _load(settings.jwt_private_key_pem)


def issuer(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/auth"


def jwks(settings: Settings) -> dict[str, Any]:
    """The public JWKS published at /auth/jwks."""
    sk = signing_key(settings)
    public = sk.key.as_dict(private=False)
    return {"keys": [{**public, "kid": sk.kid, "alg": ALG, "use": "sig"}]}


def issue_access_token(
    settings: Settings,
    *,
    user: UserAccount,
    client_id: str,
    scope: str,
    patient: str | None = None,
    lifetime: int | None = None,
) -> str:
    """Sign an access token for ``user``; ``lifetime`` is capped by settings and by one hour."""
    seconds = min(lifetime or settings.access_token_seconds, settings.access_token_seconds, MAX_LIFETIME)
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
        "role": user.role,
    }
    if user.fhir_user:
        claims["fhirUser"] = user.fhir_user
    if patient:
        claims["patient"] = patient
    sk = signing_key(settings)
    return jwt.encode({"alg": ALG, "kid": sk.kid, "typ": "JWT"}, claims, sk.key, algorithms=[ALG])


def issue_id_token(
    settings: Settings,
    *,
    user: UserAccount,
    client_id: str,
    nonce: str | None = None,
    auth_time: int | None = None,
) -> str:
    """An OpenID Connect id_token (SMART ``openid fhirUser``): who signed in, for this client only.

    ``fhirUser`` is an absolute URL here (SMART App Launch §scopes: openid), unlike the access
    token's relative reference, which the FHIR server itself reads.
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
    if user.fhir_user:
        claims["fhirUser"] = f"{settings.fhir_base}/{user.fhir_user}"
    sk = signing_key(settings)
    return jwt.encode({"alg": ALG, "kid": sk.kid, "typ": "JWT"}, claims, sk.key, algorithms=[ALG])


def lifetime_of(token_claims: dict[str, Any]) -> int:
    return int(token_claims["exp"]) - int(token_claims["iat"])


def verify_access_token(token: str, settings: Settings) -> dict[str, Any]:
    """Return the claims of a valid access token or raise InvalidToken with a short reason."""
    if not isinstance(token, str) or not token or len(token) > 8192 or token.count(".") != 2:
        raise InvalidToken("malformed token")
    sk = signing_key(settings)
    try:
        decoded = jwt.decode(token, sk.key, algorithms=[ALG])
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
    if header.get("kid") not in (None, sk.kid):
        raise InvalidToken("unknown key")
    for name in ("iss", "sub", "aud", "exp", "iat", "client_id", "scope", "role"):
        if name not in claims:
            raise InvalidToken("missing claims")
    now = int(time.time())
    try:
        exp, iat = int(claims["exp"]), int(claims["iat"])
    except (TypeError, ValueError):
        raise InvalidToken("malformed token") from None
    if exp <= now:  # no leeway: the same server issues and checks
        raise InvalidToken("token expired")
    if iat > now + LEEWAY_SECONDS:
        raise InvalidToken("token issued in the future")
    if claims["iss"] != issuer(settings):
        raise InvalidToken("wrong issuer")
    aud = claims["aud"]
    if aud != settings.fhir_base and not (isinstance(aud, list) and aud == [settings.fhir_base]):
        raise InvalidToken("wrong audience")
    return dict(claims)

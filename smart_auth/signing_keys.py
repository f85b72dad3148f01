"""The key ring of the token signer: which key signs, which only verify, which the JWKS publishes.

Keys live in configuration (``fhirserver.config``): ``JWT_SIGNING_KEYS`` lists several,
each with a key id and an *active-from* instant; ``JWT_PRIVATE_KEY_PEM`` / ``_FILE`` alone
is a ring of one key that signs from the start, named by its RFC 7638 thumbprint. The
state of every key follows from the configuration and the clock alone, so that every
instance of the server agrees without talking to the others:

- **next** (verify-only): its active-from is still ahead. Published in the JWKS so that
  relying parties fetch it before the first token signed with it reaches them; it signs
  nothing yet. Configure a new key at least ``JWKS_MAX_AGE`` (the JWKS cache lifetime)
  plus the time a rollout takes before its active-from.
- **signing**: the key with the latest active-from that has passed.
- **retiring** (verify-only): an older key. It signed its last token when its successor
  became active, so it stays published and verifies until that instant plus the longest
  token lifetime (access and id tokens live at most an hour) and the clock skew allowed
  between instances.
- **retired**: past that. Not published, and a token naming it is invalid; remove the key
  from the configuration at leisure.

Refresh tokens are opaque database rows and depend on no key. This mirrors
``ENCRYPTION_KEYS`` / ``ACTIVE_KEY_ID`` of message encryption (a ``kid:`` list where one
key writes and the others still read), with the switch made by time instead of by name,
because a signing key must be public before it is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from joserfc.jwk import RSAKey

from fhirserver.config import Settings, SigningKeyConfig

ALG = "RS256"
# The longest lifetime of any token we sign (access tokens and id_tokens: one hour at most).
MAX_TOKEN_LIFETIME = 3600
# Clock skew tolerated between instances (``iat`` checks, and the retirement of a key).
CLOCK_SKEW_SECONDS = 30
# How long relying parties may cache /auth/jwks (its Cache-Control max-age): the least lead
# time between configuring a key and its active-from.
JWKS_MAX_AGE = 300

SIGNING, NEXT, RETIRING, RETIRED = "signing", "next", "retiring", "retired"


class KeyConfigError(RuntimeError):
    """The configured keys cannot make a ring (no key, a key that is not an RSA private key)."""


@dataclass(frozen=True)
class RingKey:
    kid: str
    key: RSAKey
    active_from: float
    state: str
    # retiring: the instant it stops verifying; next: the instant it starts signing.
    until: float | None = None

    @property
    def published(self) -> bool:
        return self.state != RETIRED

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": ALG, "use": "sig"}


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[RingKey, ...]  # every configured key, newest active-from first

    @property
    def signer(self) -> RingKey:
        return next(k for k in self.keys if k.state == SIGNING)

    @property
    def published(self) -> tuple[RingKey, ...]:
        return tuple(k for k in self.keys if k.published)

    def verifier(self, kid: Any) -> RingKey | None:
        """The published key named ``kid`` (None for an unknown, retired or missing kid)."""
        if not isinstance(kid, str):
            return None
        return next((k for k in self.published if k.kid == kid), None)


@lru_cache(maxsize=16)
def _import(pem: str) -> tuple[RSAKey, str]:
    try:
        key = RSAKey.import_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyConfigError("a configured signing key is not an RSA key in PEM") from exc
    if not key.is_private:
        raise KeyConfigError("a configured signing key is a public key; the private key is needed")
    return key, key.thumbprint()


def configured(settings: Settings) -> tuple[SigningKeyConfig, ...]:
    """The keys of the configuration: JWT_SIGNING_KEYS, else the single legacy key."""
    if settings.jwt_signing_keys:
        return settings.jwt_signing_keys
    if settings.jwt_private_key_pem:
        return (SigningKeyConfig(kid="", pem=settings.jwt_private_key_pem),)
    return ()


def key_ring(settings: Settings, now: float | None = None) -> KeyRing:
    """The ring at ``now`` (default: the clock). Cheap: the keys are parsed once per process."""
    now = time.time() if now is None else now
    entries = sorted(configured(settings), key=lambda c: c.active_from, reverse=True)
    if not entries:
        raise KeyConfigError("no signing key is configured (JWT_SIGNING_KEYS or JWT_PRIVATE_KEY_PEM)")
    out: list[RingKey] = []
    successor_from: float | None = None  # active-from of the newer key that has started to sign
    for entry in entries:
        key, thumbprint = _import(entry.pem)
        kid = entry.kid or thumbprint
        if entry.active_from > now:
            ring_key = RingKey(kid, key, entry.active_from, NEXT, until=entry.active_from)
        elif successor_from is None:
            ring_key = RingKey(kid, key, entry.active_from, SIGNING)
            successor_from = entry.active_from
        else:
            until = successor_from + MAX_TOKEN_LIFETIME + CLOCK_SKEW_SECONDS
            ring_key = RingKey(kid, key, entry.active_from, RETIRING if now < until else RETIRED, until=until)
            successor_from = entry.active_from
        out.append(ring_key)
    if successor_from is None:
        raise KeyConfigError("no configured signing key is active yet (every active-from is ahead)")
    if len({k.kid for k in out}) != len(out):
        raise KeyConfigError("two configured signing keys have the same key id")
    return KeyRing(tuple(out))


def jwks(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """The public JWKS: every key that is next, signing or retiring (never private parts)."""
    return {"keys": [k.public_jwk() for k in key_ring(settings, now).published]}


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(ring_key: RingKey) -> str:
    """The state of a key in words, for ``fhirserver keys status`` (no key material)."""
    if ring_key.state == SIGNING:
        return "signing" + (f" since {_instant(ring_key.active_from)}" if ring_key.active_from else "")
    if ring_key.state == NEXT:
        return f"verify-only: published, signs from {_instant(ring_key.until or 0)}"
    if ring_key.state == RETIRING:
        return f"verify-only: retiring until {_instant(ring_key.until or 0)}"
    return f"retired since {_instant(ring_key.until or 0)}: not published, remove it from the configuration"


def status_lines(settings: Settings, now: float | None = None) -> list[str]:
    """One line per configured key: kid, algorithm, state (newest first), plus warnings."""
    now = time.time() if now is None else now
    ring = key_ring(settings, now)
    width = max(len(k.kid) for k in ring.keys)
    lines = [f"{'kid':<{width}}  alg    state"]
    lines += [f"{k.kid:<{width}}  {ALG}  {describe(k)}" for k in ring.keys]
    for k in ring.keys:
        if k.state == NEXT and k.active_from - now < JWKS_MAX_AGE:
            lines.append(
                f"warning: {k.kid} signs in less than the JWKS cache lifetime ({JWKS_MAX_AGE} s): "
                "relying parties may not have fetched it yet"
            )
    return lines

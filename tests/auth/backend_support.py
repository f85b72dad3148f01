"""Helpers for the backend-services tests: client keys, signed assertions, token requests.

Assertions are built here by hand (joserfc for the signatures), so that every field a
test breaks is broken on purpose and nothing of the server's own code signs them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth import clients
from tests.support import uid

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@lru_cache(maxsize=8)
def rsa_key(n: int = 0) -> RSAKey:
    """RSA keys are slow to make: a few per run, numbered."""
    return RSAKey.generate_key(2048)


@lru_cache(maxsize=8)
def ec_key(n: int = 0) -> ECKey:
    return ECKey.generate_key("P-384")


def public_jwk(key: RSAKey | ECKey, **extra: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), "kid": key.thumbprint(), **extra}


def jwks_of(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [public_jwk(k) for k in keys]}


@dataclass
class Backend:
    client_id: str
    key: RSAKey | ECKey
    alg: str
    scope: str

    @property
    def kid(self) -> str:
        return self.key.thumbprint()


def make_backend(
    session: Session,
    *,
    scope: str = "system/*.cruds",
    key: RSAKey | ECKey | None = None,
    alg: str = "RS384",
    jwks_url: str | None = None,
) -> Backend:
    key = key or (rsa_key() if alg == "RS384" else ec_key())
    client_id = f"backend-{uid()}"
    clients.register_backend_client(
        session,
        client_id=client_id,
        name=f"Backend {client_id}",
        scope=scope,
        jwks_url=jwks_url,
        jwks=None if jwks_url else jwks_of(key),
    )
    session.commit()
    return Backend(client_id, key, alg, scope)


def token_url(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + "/auth/token"


def claims_for(settings: Settings, backend: Backend, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": backend.client_id,
        "sub": backend.client_id,
        "aud": token_url(settings),
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion(
    settings: Settings,
    backend: Backend,
    *,
    key: RSAKey | ECKey | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A client assertion of ``backend``, signed with its key (or ``key``); fields overridable."""
    head = {"alg": backend.alg, "kid": backend.kid, "typ": "JWT", **(header or {})}
    head = {k: v for k, v in head.items() if v is not None}
    payload = json.dumps(claims_for(settings, backend, **claims)).encode()
    return jws.serialize_compact(head, payload, key or backend.key, algorithms=[head["alg"]])


def unsigned_assertion(settings: Settings, backend: Backend, header: dict[str, Any], secret: bytes | None) -> str:
    """alg none (no signature) or an HMAC one keyed by ``secret`` (e.g. the public key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims_for(settings, backend)).encode())}"
    if secret is None:
        return signing_input + "."
    digest = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(digest)}"


def token_form(signed: str | None, scope: str | None = "system/Patient.rs", **extra: Any) -> dict[str, str]:
    form: dict[str, Any] = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def request_token(web: Any, signed: str | None, scope: str | None = "system/Patient.rs", **extra: Any) -> Any:
    return web.post("/auth/token", data=token_form(signed, scope, **extra))


def system_token(web: Any, settings: Settings, backend: Backend, scope: str) -> str:
    resp = request_token(web, assertion(settings, backend), scope)
    assert resp.status_code == 200, resp.data[:300]
    return str(resp.get_json()["access_token"])

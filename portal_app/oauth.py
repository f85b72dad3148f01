"""The SMART App Launch client side: discovery, PKCE, the authorize URL, token exchange and refresh.

Written against the SMART spec rather than our server's internals: the portal is a
confidential client that authenticates with HTTP Basic and always sends an S256
PKCE challenge. Nothing here touches Flask, so the protocol is testable alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import requests

HTTP_TIMEOUT = 15
DISCOVERY_TTL = 300


class OAuthError(Exception):
    """The authorization server refused or failed; the message is safe to show (no secrets)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str
    revocation: str | None = None
    end_session: str | None = None


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_at: float
    scope: str
    refresh_token: str | None = None
    patient: str | None = None
    id_token: str | None = None

    def to_session(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "scope": self.scope,
            "refresh_token": self.refresh_token,
            "patient": self.patient,
            "id_token": self.id_token,
        }

    @classmethod
    def from_session(cls, data: dict[str, Any]) -> Tokens:
        return cls(
            access_token=data["access_token"],
            expires_at=float(data["expires_at"]),
            scope=data.get("scope") or "",
            refresh_token=data.get("refresh_token"),
            patient=data.get("patient"),
            id_token=data.get("id_token"),
        )

    def expired(self, leeway: float = 30.0, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) + leeway >= self.expires_at


def new_pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(64)
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    aud: str,
    code_challenge: str,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": aud,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    sep = "&" if "?" in endpoint else "?"
    return endpoint + sep + urlencode(params)


def decode_claims(jwt: str) -> dict[str, Any]:
    """The payload of a JWT, NOT verified: for display only (the API verifies every token)."""
    try:
        payload = jwt.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (IndexError, ValueError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def end_session_endpoint(token_endpoint: str) -> str:
    """Our authorization server's back-channel logout, next to its token endpoint
    (``.../auth/token`` -> ``.../auth/end-session``). Discovery does not advertise it: it is
    this server's own endpoint, not a standard one."""
    return token_endpoint.rsplit("/", 1)[0] + "/end-session"


class Discovery:
    """Reads and caches ``.well-known/smart-configuration`` (the FHIR base first, then the root)."""

    def __init__(self, public_base: str, api_base: str) -> None:
        self.public_base = public_base.rstrip("/")
        self.api_base = api_base.rstrip("/")
        self._lock = threading.Lock()
        self._cached: tuple[float, Endpoints] | None = None

    def backchannel(self, url: str) -> str:
        """Rewrite a public URL to the internal base for server-to-server calls."""
        if self.api_base != self.public_base and url.startswith(self.public_base + "/"):
            return self.api_base + url[len(self.public_base) :]
        return url

    def endpoints(self) -> Endpoints:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < DISCOVERY_TTL:
                return self._cached[1]
        found = self._fetch()
        with self._lock:
            self._cached = (time.monotonic(), found)
        return found

    def _fetch(self) -> Endpoints:
        for path in ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"):
            try:
                resp = requests.get(self.api_base + path, headers={"Accept": "application/json"}, timeout=HTTP_TIMEOUT)
            except requests.RequestException:
                continue
            if resp.status_code != 200:
                continue
            try:
                doc = resp.json()
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("authorization_endpoint") and doc.get("token_endpoint"):
                token = str(doc["token_endpoint"])
                return Endpoints(
                    authorize=str(doc["authorization_endpoint"]),
                    token=token,
                    revocation=doc.get("revocation_endpoint"),
                    end_session=end_session_endpoint(token),
                )
        raise OAuthError("The sign-in service cannot be reached right now.", 503)


def _token_request(url: str, client_id: str, client_secret: str, data: dict[str, str]) -> Tokens:
    try:
        resp = requests.post(
            url,
            data=data,
            auth=(client_id, client_secret),
            headers={"Accept": "application/json"},
            timeout=HTTP_TIMEOUT,
        )
    except requests.RequestException as exc:
        raise OAuthError("The sign-in service cannot be reached right now.", 503) from exc
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
        code = body.get("error") if isinstance(body, dict) else None
        raise OAuthError(f"Sign-in failed ({code or resp.status_code}).")
    try:
        lifetime = float(body.get("expires_in") or 300)
    except (TypeError, ValueError):
        lifetime = 300.0
    return Tokens(
        access_token=str(body["access_token"]),
        expires_at=time.time() + lifetime,
        scope=str(body.get("scope") or ""),
        refresh_token=body.get("refresh_token") or data.get("refresh_token"),
        patient=body.get("patient"),
        id_token=body.get("id_token"),
    )


def exchange_code(
    token_url: str, client_id: str, client_secret: str, code: str, redirect_uri: str, code_verifier: str
) -> Tokens:
    return _token_request(
        token_url,
        client_id,
        client_secret,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        },
    )


def refresh(token_url: str, client_id: str, client_secret: str, tokens: Tokens) -> Tokens:
    if not tokens.refresh_token:
        raise OAuthError("No refresh token.")
    new = _token_request(
        token_url,
        client_id,
        client_secret,
        {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
    )
    # A refresh answer may omit the patient context or the id_token: keep the ones we had
    # (logout needs the id_token to end the sign-in at the authorization server).
    if new.patient is None and tokens.patient is not None:
        new = replace(new, patient=tokens.patient)
    if new.id_token is None and tokens.id_token is not None:
        new = replace(new, id_token=tokens.id_token)
    return new


def revoke(url: str, client_id: str, client_secret: str, token: str, hint: str) -> bool:
    """RFC 7009 revocation with client Basic auth; True when the server answered 200.

    Never raises: logout goes on whatever happens here (the caller logs a failure).
    """
    return _client_post(url, client_id, client_secret, {"token": token, "token_type_hint": hint}) == 200


def end_session(url: str, client_id: str, client_secret: str, id_token: str) -> bool:
    """End the user's sign-in at the authorization server (its back-channel ``end-session``,
    named by the id_token's ``sid``); True when it answered 204. Never raises."""
    return _client_post(url, client_id, client_secret, {"id_token_hint": id_token}) == 204


def _client_post(url: str, client_id: str, client_secret: str, data: dict[str, str]) -> int | None:
    """POST a form as the client (HTTP Basic); the status, or None when the server is unreachable."""
    try:
        resp = requests.post(url, data=data, auth=(client_id, client_secret), timeout=HTTP_TIMEOUT)
    except requests.RequestException:
        return None
    return resp.status_code

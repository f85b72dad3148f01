"""Server-side sessions (Flask-Session), sealed at rest, and the idle timeout.

The browser holds only a random session id; tokens and everything else stay on the
server (files in development, Redis in production). The store never sees either in
clear: each session is kept under a SHA-256 hash of its id (a dump of the keys names no
live cookie), and each value is encrypted with AES-256-GCM, its storage key bound in as
associated data (a value copied under another key does not open). A value that does not
open is no session: the user is simply signed out. The idle timeout is enforced by the
portal itself from ``last_seen``, so that background polling (the alerts badge) does not
keep an abandoned session alive; the absolute lifetime from ``signed_in_at`` (stamped when
the first sign-in regenerates the id), so that even an active session ends.

The cookie is HttpOnly, SameSite=Lax (a link in a notification email is a cross-site
navigation that must arrive signed in), and in production ``__Host-`` prefixed and Secure,
hence on Path=/: its name differs from the login server's cookies (``fhir_auth_*``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask, request, session
from flask_session.cachelib import CacheLibSessionInterface
from flask_session.redis import RedisSessionInterface

from portal_app.config import PortalConfig

log = logging.getLogger(__name__)
# The base name: production adds the __Host- prefix (PortalConfig.strict_transport).
COOKIE_NAME = "webmail_portal_session"
HOST_PREFIX = "__Host-"
KEY_PREFIX = "portal:"
SID_BYTES = 32
# Requests that must not count as user activity.
PASSIVE_ENDPOINTS = frozenset({"console.alerts_json", "static"})
# The first byte of every sealed value: another format (or key scheme) can come next to it.
SEAL_VERSION = b"\x01"
NONCE_BYTES = 12


def store_key(sid: str, prefix: str = KEY_PREFIX) -> str:
    """Where session ``sid`` is kept: a hash of the id, so that the store's keys are not cookies."""
    return prefix + hashlib.sha256(sid.encode("utf-8")).hexdigest()


class SessionSeal:
    """AES-256-GCM over the serialized session, bound to its storage key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the session encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, data: dict[str, Any], store_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(data, separators=(",", ":")).encode("utf-8")
        return SEAL_VERSION + nonce + self._aead.encrypt(nonce, plain, self._aad(store_id))

    def open(self, blob: Any, store_id: str) -> dict[str, Any] | None:
        """The session stored as ``blob``, or None when it is missing, tampered with, moved
        from another key, sealed under another key, or otherwise not ours."""
        if blob is None:
            return None
        if not isinstance(blob, bytes) or len(blob) <= 1 + NONCE_BYTES or blob[:1] != SEAL_VERSION:
            log.info("a stored portal session is not in the sealed format; it counts as signed out")
            return None
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            data = json.loads(self._aead.decrypt(nonce, sealed, self._aad(store_id)))
        except (InvalidTag, ValueError):
            # Tampering, a value moved between keys, or a new key: worth knowing, never a 500.
            log.info("a stored portal session did not open; it counts as signed out")
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _aad(store_id: str) -> bytes:
        return SEAL_VERSION + store_id.encode("utf-8")


class _SealedStore:
    """What both backends share: hashed keys and sealed values (Flask-Session does the rest:
    cookies, lifetimes, regeneration). Mixed in before the Flask-Session interface."""

    key_prefix: str
    seal: SessionSeal

    def _get_store_id(self, sid: str) -> str:
        return store_key(sid, self.key_prefix)

    def _retrieve_session_data(self, store_id: str) -> dict[str, Any] | None:
        raise NotImplementedError  # each backend below reads its own client

    def load(self, sid: str) -> dict[str, Any] | None:
        """The data a request with session id ``sid`` would get (None: no session)."""
        return self._retrieve_session_data(self._get_store_id(sid))


class SealedRedisSessionInterface(_SealedStore, RedisSessionInterface):
    """Production: Redis keys ``portal:<sha256(sid)>``, sealed values, Redis expiry as the lifetime."""

    def __init__(self, app: Flask, seal: SessionSeal, **kwargs: Any) -> None:
        self.seal = seal
        super().__init__(app, **kwargs)

    def _retrieve_session_data(self, store_id: str) -> dict[str, Any] | None:
        return self.seal.open(self.client.get(store_id), store_id)

    def _upsert_session(self, session_lifetime: timedelta, session: Any, store_id: str) -> None:
        self.client.set(
            name=store_id,
            value=self.seal.seal(dict(session), store_id),
            ex=int(session_lifetime.total_seconds()),
        )


class SealedCacheLibSessionInterface(_SealedStore, CacheLibSessionInterface):
    """Development: a cachelib cache (files under var/), the same hashed keys and sealed values."""

    def __init__(self, app: Flask, seal: SessionSeal, **kwargs: Any) -> None:
        self.seal = seal
        super().__init__(app, **kwargs)

    def _retrieve_session_data(self, store_id: str) -> dict[str, Any] | None:
        return self.seal.open(self.cache.get(store_id), store_id)

    def _upsert_session(self, session_lifetime: timedelta, session: Any, store_id: str) -> None:
        self.cache.set(
            key=store_id,
            value=self.seal.seal(dict(session), store_id),
            timeout=int(session_lifetime.total_seconds()),
        )


def session_interface(app: Flask, config: PortalConfig) -> SealedRedisSessionInterface | SealedCacheLibSessionInterface:
    """The sealed store for ``filesystem:///path`` (cachelib files) or ``redis://...``."""
    parsed = urlparse(config.session_url)
    common: dict[str, Any] = {
        "key_prefix": KEY_PREFIX,
        "permanent": True,
        "sid_length": SID_BYTES,
        "serialization_format": "json",
    }
    if parsed.scheme == "filesystem":
        from cachelib.file import FileSystemCache

        path = parsed.path or "var/portal-sessions"
        if parsed.netloc:  # filesystem://relative/path
            path = parsed.netloc + parsed.path
        cache = FileSystemCache(path, threshold=5000, mode=0o600)
        return SealedCacheLibSessionInterface(app, SessionSeal(config.session_key()), client=cache, **common)
    if parsed.scheme in ("redis", "rediss", "unix"):
        from redis import Redis

        client = Redis.from_url(config.session_url)
        return SealedRedisSessionInterface(app, SessionSeal(config.session_key()), client=client, **common)
    raise ValueError("session_url must be filesystem:///path or redis://...")


def cookie_name(config: PortalConfig) -> str:
    return HOST_PREFIX + COOKIE_NAME if config.strict_transport else COOKIE_NAME


def install_sessions(app: Flask, config: PortalConfig) -> None:
    idle = timedelta(minutes=config.session_idle_minutes)
    app.config.update(
        SESSION_PERMANENT=True,
        PERMANENT_SESSION_LIFETIME=idle,
        SESSION_REFRESH_EACH_REQUEST=True,
        SESSION_COOKIE_NAME=cookie_name(config),
        SESSION_COOKIE_PATH="/",  # __Host- requires it; the name keeps it apart from /auth's cookies
        SESSION_COOKIE_DOMAIN=None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.strict_transport,
    )
    app.session_interface = session_interface(app, config)
    _skip_saving_passive_requests(app)
    _stamp_sign_in(app)
    idle_seconds = idle.total_seconds()
    absolute_seconds = config.session_absolute_hours * 3600

    @app.before_request
    def _idle_timeout() -> None:
        now = time.time()
        last = session.get("last_seen")
        started = session.get("signed_in_at")
        if (isinstance(last, int | float) and now - last > idle_seconds) or (
            isinstance(started, int | float) and now - started > absolute_seconds
        ):
            session.clear()
            session["timed_out"] = True
        if request.endpoint not in PASSIVE_ENDPOINTS:
            session["last_seen"] = now


def _stamp_sign_in(app: Flask) -> None:
    """Note when the session's first sign-in happened (the absolute lifetime counts from it).

    Every sign-in regenerates the session id (``portal_app.auth``); a second realm signing
    in later keeps the first stamp, so that it cannot extend the session.
    """
    interface: Any = app.session_interface
    regenerate = interface.regenerate

    def stamped(sess: Any) -> None:
        sess.setdefault("signed_in_at", time.time())
        regenerate(sess)

    interface.regenerate = stamped


def _skip_saving_passive_requests(app: Flask) -> None:
    """Passive requests (the 5-second alerts poll, static files) never write the session.

    A server-side session is saved whole at the end of each request; a poll that started
    before a sign-in or a form post finished would otherwise write back its stale copy
    and undo them (last write wins).
    """
    interface: Any = app.session_interface
    save = interface.save_session

    def save_session(app_: Flask, sess: Any, response: Any) -> None:
        if request.endpoint in PASSIVE_ENDPOINTS:
            return
        save(app_, sess, response)

    interface.save_session = save_session

"""Server-side sessions (Flask-Session) and the idle timeout.

The browser holds only a random session id; tokens and everything else stay on the
server (files in development, Redis in production). The idle timeout is enforced by
the portal itself from ``last_seen``, so that background polling (the alerts badge)
does not keep an abandoned session alive.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from flask import Flask, request, session

from portal_app.config import PortalConfig

COOKIE_NAME = "webmail_portal_session"
# Requests that must not count as user activity.
PASSIVE_ENDPOINTS = frozenset({"console.alerts_json", "static"})


def session_backend(url: str) -> dict[str, object]:
    """Flask-Session settings for ``filesystem:///path`` or ``redis://...``."""
    parsed = urlparse(url)
    if parsed.scheme == "filesystem":
        from cachelib.file import FileSystemCache

        path = parsed.path or "var/portal-sessions"
        if parsed.netloc:  # filesystem://relative/path
            path = parsed.netloc + parsed.path
        return {"SESSION_TYPE": "cachelib", "SESSION_CACHELIB": FileSystemCache(path, threshold=5000, mode=0o600)}
    if parsed.scheme in ("redis", "rediss", "unix"):
        from redis import Redis

        return {"SESSION_TYPE": "redis", "SESSION_REDIS": Redis.from_url(url)}
    raise ValueError("session_url must be filesystem:///path or redis://...")


def install_sessions(app: Flask, config: PortalConfig) -> None:
    from flask_session import Session

    idle = timedelta(minutes=config.session_idle_minutes)
    app.config.update(
        SESSION_PERMANENT=True,
        PERMANENT_SESSION_LIFETIME=idle,
        SESSION_REFRESH_EACH_REQUEST=True,
        SESSION_KEY_PREFIX="portal:",
        SESSION_SERIALIZATION_FORMAT="json",
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH="/portal",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.base_url.startswith("https://"),
        **session_backend(config.session_url),
    )
    Session(app)
    _skip_saving_passive_requests(app)
    idle_seconds = idle.total_seconds()

    @app.before_request
    def _idle_timeout() -> None:
        now = time.time()
        last = session.get("last_seen")
        if isinstance(last, int | float) and now - last > idle_seconds:
            session.clear()
            session["timed_out"] = True
        if request.endpoint not in PASSIVE_ENDPOINTS:
            session["last_seen"] = now


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

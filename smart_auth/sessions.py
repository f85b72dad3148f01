"""Server-side browser sessions of the login server (table ``web_session``).

The cookie carries only a random 256-bit id; the table keys the session by the id's
SHA-256, so a copy of the table cannot be replayed as cookies. Sessions end after
``session_idle_minutes`` without a request (HIPAA automatic logoff) and after
``session_absolute_hours`` in any case. Logging in issues a new id
(:func:`regenerate`), logging out deletes the row (:func:`end`), so an old cookie
is worthless on the server.

A row and a cookie are created only when a view writes to the session: the FHIR
API never touches ``session``, so its responses never carry a cookie. The cookie is
HttpOnly, SameSite=Lax, limited to Path=/auth, and Secure when the public base URL
is https.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from werkzeug.datastructures import CallbackDict

from fhirserver.config import Settings
from fhirserver.extensions import db
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import WebSession

log = logging.getLogger(__name__)
COOKIE_NAME = "fhir_auth_session"
COOKIE_PATH = "/auth"
USER_KEY = "uid"


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """The session dict of one request, with the bookkeeping the interface needs."""

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        id_hash: str | None = None,
        created_at: datetime | None = None,
        expired: bool = False,
    ) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.id_hash = id_hash
        self.created_at = created_at
        self.new = id_hash is None
        self.modified = False
        self.expired = expired  # the cookie named a session that timed out
        self.regenerate_requested = False
        self.end_requested = False


def regenerate(session: Any) -> None:
    """Give the session a new id at the end of this request (call on login and privilege change)."""
    if isinstance(session, ServerSession):
        session.regenerate_requested = True
        session.modified = True


def end(session: Any) -> None:
    """Delete the session on the server and the cookie in the browser (logout)."""
    session.clear()
    if isinstance(session, ServerSession):
        session.end_requested = True


def end_other_sessions(dbs: Session, user_id: str, keep: Any) -> None:
    """Log a user out everywhere else (after a password change)."""
    q = delete(WebSession).where(WebSession.user_id == user_id)
    if isinstance(keep, ServerSession) and keep.id_hash:
        q = q.where(WebSession.id_hash != keep.id_hash)
    dbs.execute(q)


def purge_expired(dbs: Session, settings: Settings) -> int:
    """Delete rows past their idle or absolute limit (run by the CLI/cron; optional)."""
    now = utcnow()
    result = dbs.execute(
        delete(WebSession).where(
            (WebSession.last_seen_at < now - timedelta(minutes=settings.session_idle_minutes))
            | (WebSession.created_at < now - timedelta(hours=settings.session_absolute_hours))
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _valid_cookie(value: str | None) -> bool:
    return bool(value) and 20 <= len(value or "") <= 100 and (value or "").isascii()


class DatabaseSessionInterface(SessionInterface):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.idle = timedelta(minutes=settings.session_idle_minutes)
        self.absolute = timedelta(hours=settings.session_absolute_hours)
        self.secure = settings.base_url.lower().startswith("https://")

    # -- loading --------------------------------------------------------------------
    def open_session(self, app: Flask, request: Request) -> ServerSession:
        cookie = request.cookies.get(COOKIE_NAME)
        if not _valid_cookie(cookie):
            return ServerSession()
        id_hash = sha256_hex(cookie or "")
        dbs = db.session()
        try:
            row = dbs.execute(select(WebSession).where(WebSession.id_hash == id_hash)).scalar_one_or_none()
            if row is None:
                dbs.commit()
                return ServerSession(expired=True)
            now = utcnow()
            if now - as_utc(row.last_seen_at) > self.idle or now - as_utc(row.created_at) > self.absolute:
                dbs.delete(row)
                dbs.commit()
                return ServerSession(expired=True)
            try:
                data = json.loads(row.data or "{}")
            except ValueError:
                data = {}
            created = as_utc(row.created_at)
            dbs.commit()
        except Exception:
            dbs.rollback()
            raise
        return ServerSession(data if isinstance(data, dict) else {}, id_hash=id_hash, created_at=created)

    # -- saving ---------------------------------------------------------------------
    def _set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            path=COOKIE_PATH,
            httponly=True,
            secure=self.secure,
            samesite="Lax",
        )

    def _delete_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, secure=self.secure, samesite="Lax")

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, ServerSession) or not self._needs_database(session):
            return  # the common case for the API: no cookie, nothing written, no database access
        dbs = db.session()
        if response.status_code >= 500:
            dbs.rollback()  # never let a failed view's half-done work ride along with our commit
        try:
            self._save(dbs, session, response)
            dbs.commit()
        except Exception:
            dbs.rollback()
            log.exception("could not save the login session")
            raise

    @staticmethod
    def _needs_database(session: ServerSession) -> bool:
        return bool(session.id_hash) or (session.modified and bool(session)) or session.end_requested

    def _save(self, dbs: Session, session: ServerSession, response: Response) -> None:
        now = utcnow()
        if session.end_requested or (not session and not session.new and session.modified):
            if session.id_hash:
                dbs.execute(delete(WebSession).where(WebSession.id_hash == session.id_hash))
            self._delete_cookie(response)
            return
        # A stale cookie (expired session) is left alone until the session is written again: it
        # maps to nothing, and it lets the login page say why the user has to sign in again.
        if not session.modified:
            if session.id_hash:  # an existing session was used: it is not idle
                dbs.execute(update(WebSession).where(WebSession.id_hash == session.id_hash)
                            .values(last_seen_at=now))
            return
        if not session and session.new:
            return
        data = json.dumps(dict(session), separators=(",", ":"))
        user_id = session.get(USER_KEY)
        user_id = user_id if isinstance(user_id, str) else None
        if session.new or session.regenerate_requested:
            if session.id_hash:
                dbs.execute(delete(WebSession).where(WebSession.id_hash == session.id_hash))
            value = secrets.token_urlsafe(32)
            dbs.add(WebSession(id_hash=sha256_hex(value), data=data, user_id=user_id,
                               created_at=now, last_seen_at=now))
            self._set_cookie(response, value)
            return
        dbs.execute(update(WebSession).where(WebSession.id_hash == session.id_hash)
                    .values(data=data, user_id=user_id, last_seen_at=now))
        response.vary.add("Cookie")

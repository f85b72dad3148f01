"""Browser sessions of the login server: a sealed cookie before sign-in, a database row after.

Before anyone signs in, a browser's session (the pending authorization request: client,
redirect URI, PKCE challenge, state; and the login form's CSRF token) travels in a sealed
cookie (AES-256-GCM under a key derived from SECRET_KEY) that lives ``PRE_LOGIN_SECONDS``
from its creation. Anonymous requests therefore write nothing to the database: a flood of
GETs of the login or authorize pages leaves no rows behind.

Signing in moves the session into the ``web_session`` table: the cookie then carries only
a random 256-bit id, and the table keys the session by the id's SHA-256, so a copy of the
table cannot be replayed as cookies. Sessions end after ``session_idle_minutes`` without
a request (HIPAA automatic logoff) and after ``session_absolute_hours`` in any case.
Signing in issues a new id (:func:`regenerate`), logging out deletes the row (:func:`end`),
so an old cookie is worthless on the server. Each sign-in has a ``login_id`` that survives
id regeneration: the grants made in it and its id_tokens (claim ``sid``) name it, so that
logging out can end them too (:func:`end_login`).

The cookies are HttpOnly and SameSite=Lax; in production also ``__Host-`` prefixed and
Secure (``smart_auth.cookie_policy``), which forces Path=/. Only /auth requests open a
session: the FHIR API never reads these cookies (nor any other), and its responses carry none.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import time
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from werkzeug.datastructures import CallbackDict

from fhirserver.config import Settings
from fhirserver.core.crypto import derive_key, seal, unseal
from fhirserver.extensions import db
from smart_auth import cookie_policy
from smart_auth.hashing import as_utc, sha256_hex, utcnow
from smart_auth.models import WebSession

log = logging.getLogger(__name__)
# Base names: production adds the __Host- prefix (smart_auth.cookie_policy).
COOKIE_NAME = "fhir_auth_session"
PRE_COOKIE_NAME = "fhir_auth_pre"
# The only paths whose requests open a session (the login server's blueprint).
SESSION_PATH = "/auth"
USER_KEY = "uid"
LOGIN_KEY = "login"
PRE_LOGIN_SECONDS = 1200
# Browsers keep cookies up to about 4 KB; the authorize view refuses larger pending requests.
MAX_PRE_COOKIE = 3800
PRE_PURPOSE = b"fhir-auth pre-login session v1"


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """The session dict of one request, with the bookkeeping the interface needs."""

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        id_hash: str | None = None,
        created_at: datetime | None = None,
        expired: bool = False,
        pre_created: int | None = None,
    ) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.id_hash = id_hash  # set when the session is a database row (someone signed in)
        self.created_at = created_at
        self.pre_created = pre_created  # set when it came from a sealed pre-login cookie
        self.new = id_hash is None
        self.modified = False
        self.expired = expired  # the cookie named a session that timed out or was ended
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


def new_login_id() -> str:
    return secrets.token_urlsafe(24)


def end_other_sessions(dbs: Session, user_id: str, keep: Any) -> None:
    """Log a user out everywhere else (after a password change)."""
    q = delete(WebSession).where(WebSession.user_id == user_id)
    if isinstance(keep, ServerSession) and keep.id_hash:
        q = q.where(WebSession.id_hash != keep.id_hash)
    dbs.execute(q)


def end_login(dbs: Session, login_id: str) -> int:
    """End every browser session of one sign-in (a back-channel logout names it by ``sid``)."""
    result = dbs.execute(delete(WebSession).where(WebSession.login_id == login_id))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_expired(dbs: Session, settings: Settings) -> int:
    """Delete rows past their idle or absolute limit (the Celery beat purge runs this)."""
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
        self.cookie_name = cookie_policy.name(COOKIE_NAME, settings)
        self.pre_cookie_name = cookie_policy.name(PRE_COOKIE_NAME, settings)
        self.cookie_attributes = cookie_policy.attributes(settings, samesite="Lax")
        self.pre_key = derive_key(settings.secret_key, PRE_PURPOSE)

    # -- the sealed pre-login cookie ---------------------------------------------------
    def _open_pre(self, value: str | None) -> ServerSession | None:
        if not value or len(value) > MAX_PRE_COOKIE * 2:
            return None
        try:
            blob = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        plain = unseal(blob, self.pre_key, PRE_PURPOSE)
        if plain is None:
            return None
        try:
            payload = json.loads(plain)
            created, data = int(payload["c"]), payload["d"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(data, dict) or time.time() - created > PRE_LOGIN_SECONDS or USER_KEY in data:
            return None
        return ServerSession(data, pre_created=created)

    def _seal_pre(self, session: ServerSession) -> str | None:
        created = session.pre_created or int(time.time())
        plain = json.dumps({"c": created, "d": dict(session)}, separators=(",", ":")).encode()
        value = base64.urlsafe_b64encode(seal(plain, self.pre_key, PRE_PURPOSE)).rstrip(b"=").decode("ascii")
        return value if len(value) <= MAX_PRE_COOKIE else None

    # -- loading --------------------------------------------------------------------
    def open_session(self, app: Flask, request: Request) -> ServerSession:
        if request.path != SESSION_PATH and not request.path.startswith(SESSION_PATH + "/"):
            return ServerSession()  # /fhir and the rest: cookies are not read, nothing is saved
        cookie = request.cookies.get(self.cookie_name)
        expired = False
        if _valid_cookie(cookie):
            found = self._open_row(cookie or "")
            if found is not None:
                return found
            expired = True  # the cookie named a session that timed out or was ended
        pre = self._open_pre(request.cookies.get(self.pre_cookie_name)) or ServerSession()
        pre.expired = expired
        return pre

    def _open_row(self, cookie: str) -> ServerSession | None:
        id_hash = sha256_hex(cookie)
        dbs = db.session()
        try:
            row = dbs.execute(select(WebSession).where(WebSession.id_hash == id_hash)).scalar_one_or_none()
            if row is None:
                dbs.commit()
                return None
            now = utcnow()
            if now - as_utc(row.last_seen_at) > self.idle or now - as_utc(row.created_at) > self.absolute:
                dbs.delete(row)
                dbs.commit()
                return None
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
    def _cookie_args(self) -> dict[str, Any]:
        return dict(self.cookie_attributes)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, ServerSession):
            return
        if not session.id_hash and not session.get(USER_KEY) and not session.end_requested:
            self._save_pre(session, response)  # no database access at all before sign-in
            return
        if not self._needs_database(session):
            return
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

    def _save_pre(self, session: ServerSession, response: Response) -> None:
        if not session.modified:
            return
        if not session:
            if session.pre_created is not None:
                response.delete_cookie(self.pre_cookie_name, **self._cookie_args())
            return
        value = self._seal_pre(session)
        if value is None:
            log.warning("pre-login session too large for its cookie; not kept")
            return
        response.set_cookie(self.pre_cookie_name, value, max_age=PRE_LOGIN_SECONDS, **self._cookie_args())

    @staticmethod
    def _needs_database(session: ServerSession) -> bool:
        return bool(session.id_hash) or (session.modified and bool(session)) or session.end_requested

    def _save(self, dbs: Session, session: ServerSession, response: Response) -> None:
        now = utcnow()
        if session.end_requested or (not session and not session.new and session.modified):
            if session.id_hash:
                dbs.execute(delete(WebSession).where(WebSession.id_hash == session.id_hash))
            response.delete_cookie(self.cookie_name, **self._cookie_args())
            response.delete_cookie(self.pre_cookie_name, **self._cookie_args())
            return
        # A stale cookie (expired session) is left alone until the session is written again: it
        # maps to nothing, and it lets the login page say why the user has to sign in again.
        if not session.modified:
            if session.id_hash:  # an existing session was used: it is not idle
                dbs.execute(update(WebSession).where(WebSession.id_hash == session.id_hash).values(last_seen_at=now))
            return
        data = json.dumps(dict(session), separators=(",", ":"))
        user_id = session.get(USER_KEY)
        user_id = user_id if isinstance(user_id, str) else None
        login_id = session.get(LOGIN_KEY)
        login_id = login_id if isinstance(login_id, str) else None
        if session.new or session.regenerate_requested:
            if session.id_hash:
                dbs.execute(delete(WebSession).where(WebSession.id_hash == session.id_hash))
            value = secrets.token_urlsafe(32)
            dbs.add(
                WebSession(
                    id_hash=sha256_hex(value),
                    data=data,
                    user_id=user_id,
                    login_id=login_id,
                    created_at=now,
                    last_seen_at=now,
                )
            )
            response.set_cookie(self.cookie_name, value, **self._cookie_args())
            if session.pre_created is not None:
                response.delete_cookie(self.pre_cookie_name, **self._cookie_args())
            return
        dbs.execute(
            update(WebSession)
            .where(WebSession.id_hash == session.id_hash)
            .values(data=data, user_id=user_id, login_id=login_id, last_seen_at=now)
        )
        response.vary.add("Cookie")

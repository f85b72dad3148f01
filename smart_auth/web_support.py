"""Small helpers shared by the login-server views: settings, the signed-in user, pages, redirects."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, render_template, session
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.extensions import db
from smart_auth import accounts, clients
from smart_auth.models import UserAccount
from smart_auth.sessions import LOGIN_KEY, USER_KEY, new_login_id

PENDING_KEY = "authz"  # the pending authorization request (parameters and progress)
MUST_CHANGE_KEY = "pw_change"
AUTH_TIME_KEY = "auth_time"


def dbs() -> Session:
    """The request's SQLAlchemy session (Flask-SQLAlchemy's scoped session, unwrapped)."""
    return db.session()


def get_state() -> Any:
    return current_app.extensions["smart_auth"]


def settings() -> Settings:
    return get_state().settings  # type: ignore[no-any-return]


def current_user() -> UserAccount | None:
    """The signed-in user of this browser session, if the account is still active."""
    uid = session.get(USER_KEY)
    if not isinstance(uid, str):
        return None
    user = accounts.get_user(dbs(), uid)
    if user is None or not user.active:
        return None
    return user


def sign_in(user: UserAccount) -> None:
    """Put ``user`` in the session, keeping only the pending authorization request."""
    pending = session.get(PENDING_KEY)
    session.clear()
    if pending:
        session[PENDING_KEY] = pending
    session[USER_KEY] = user.id
    session[LOGIN_KEY] = new_login_id()
    session[AUTH_TIME_KEY] = int(time.time())
    if user.must_change_password:
        session[MUST_CHANGE_KEY] = True


def page(template: str, status: int = 200, **context: Any) -> ResponseReturnValue:
    return render_template(f"smart_auth/{template}", **context), status


def error_page(title: str, message: str, status: int = 400) -> ResponseReturnValue:
    return page("error.html", status, title=title, message=message)


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a relative path on this site or a URL on a registered client origin."""
    if not target or len(target) > 2000 or any(ch in target for ch in "\\\r\n\t\x00"):
        return None
    try:
        parts = urlsplit(target)
    except ValueError:  # e.g. an unclosed IPv6 literal: not a place to send anyone
        return None
    if not parts.scheme and not parts.netloc:
        return target if target.startswith("/") and not target.startswith("//") else None
    origin = clients.origin_of(target)
    if origin and origin in clients.registered_origins(dbs()):
        return target
    return None

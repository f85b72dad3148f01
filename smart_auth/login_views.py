"""Login, logout, password change and the signed-in landing page (/auth/...).

The login form answers an unknown username and a wrong password with the same page
and status (and roughly the same time: see ``accounts.authenticate``); an attempt that
must wait gets 429 with Retry-After (``smart_auth.throttle``). A successful sign-in
leaves a device cookie, which keeps this browser in good standing for the account.
A first login with a one-time password continues to the password change page before
anything else, then to the authorization request that started the login, which waits
in the session (never in the URL).

Providers and staff (and whoever enrolled) pass a second factor after the password
(``smart_auth.mfa``; its pages are ``mfa_views``): until then the session stays anonymous
and only remembers that the password was right, for a few minutes. The device cookie, a
new session id and a login id come with the full sign-in (:func:`complete_sign_in`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, g, make_response, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from fhirserver.core.audit import security_event
from smart_auth import accounts, clients, device_cookies, grants, mfa, passwords
from smart_auth.models import UserAccount
from smart_auth.sessions import LOGIN_KEY, end, end_other_sessions, regenerate
from smart_auth.web_support import (
    MUST_CHANGE_KEY,
    PENDING_KEY,
    current_user,
    dbs,
    page,
    safe_next,
    settings,
    sign_in,
)

# Password accepted, second factor next (see hold_for_second_factor).
MFA_PENDING_KEY = "mfa_pending"
LOGIN_FAILED = "The username or password is not correct."
THROTTLED = "Too many attempts. Please wait a few minutes and try again."
MAX_FIELD = 2048


def _form(name: str) -> str:
    value = request.form.get(name, "")
    return value if len(value) <= MAX_FIELD else ""


def _pending_client_name() -> str | None:
    pending = session.get(PENDING_KEY)
    if not isinstance(pending, dict):
        return None
    client = clients.get_client(dbs(), (pending.get("params") or {}).get("client_id"))
    return client.name if client else None


def after_login_target() -> str:
    """Where a signed-in user goes next: the password change, the pending request, or home."""
    if session.get(MUST_CHANGE_KEY):
        return url_for("smart_auth.password")
    if isinstance(session.get(PENDING_KEY), dict):
        return url_for("smart_auth.authorize_continue")
    return url_for("smart_auth.home")


def hold_for_second_factor(user: UserAccount) -> None:
    """Password accepted, second factor next: the (still anonymous) session remembers who and
    when, for ``mfa.PENDING_SECONDS``; nobody is signed in and no device cookie is issued yet."""
    pending = session.get(PENDING_KEY)
    session.clear()
    if pending:
        session[PENDING_KEY] = pending
    session[MFA_PENDING_KEY] = {"u": user.id, "t": int(time.time())}


def complete_sign_in(user: UserAccount, respond: Callable[[str], ResponseReturnValue] | None = None) -> Response:
    """Sign ``user`` in (new session id and login id) and leave a device cookie.

    The answer is a 303 to the next step, or ``respond(next_url)`` (e.g. the page that shows
    new recovery codes once, with a link to go on).
    """
    secret = settings().secret_key
    devices = device_cookies.read(request.cookies.get(device_cookies.cookie_name(settings())), secret)
    sign_in(user)
    regenerate(session)
    target = after_login_target()
    response: Response = make_response(respond(target)) if respond else redirect(target, 303)
    response.set_cookie(
        device_cookies.cookie_name(settings()),
        device_cookies.issue(devices, user.username, secret),
        **device_cookies.cookie_attributes(settings()),
    )
    return response


def register(bp: Blueprint) -> None:
    @bp.get("/")
    def home() -> ResponseReturnValue:
        user = current_user()
        if user is None:
            return redirect(url_for("smart_auth.login"))
        if session.get(MUST_CHANGE_KEY):
            return redirect(url_for("smart_auth.password"))
        return page("home.html", user=user, security=mfa.offered(user))

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> ResponseReturnValue:
        expired = bool(getattr(session, "expired", False))
        if request.method == "GET":
            if current_user() is not None:
                return redirect(after_login_target())
            return page(
                "login.html",
                client_name=_pending_client_name(),
                expired=expired,
                signed_out=request.args.get("signed_out") == "1",
            )
        username = _form("username")
        password = _form("password")
        secret = settings().secret_key
        devices = device_cookies.read(request.cookies.get(device_cookies.cookie_name(settings())), secret)
        try:
            user = accounts.authenticate(
                dbs(),
                settings(),
                username,
                password,
                request.remote_addr,
                device=device_cookies.nonce_for(devices, username),
            )
        except accounts.LoginThrottled as exc:
            dbs().commit()
            throttled = make_response(
                page("login.html", 429, error=THROTTLED, username=username, client_name=_pending_client_name())
            )
            throttled.headers["Retry-After"] = str(exc.retry_after)
            return throttled
        dbs().commit()
        if user is None:
            return page("login.html", 400, error=LOGIN_FAILED, username=username, client_name=_pending_client_name())
        if mfa.needed_at_login(dbs(), settings(), user):
            hold_for_second_factor(user)
            return redirect(url_for("smart_auth.mfa"), 303)
        return complete_sign_in(user)

    @bp.route("/password", methods=["GET", "POST"])
    def password() -> ResponseReturnValue:
        user = current_user()
        if user is None:
            return redirect(url_for("smart_auth.login"))
        first = bool(session.get(MUST_CHANGE_KEY))
        if request.method == "GET":
            return page("password.html", first=first, user=user)
        current, new, confirm = _form("current_password"), _form("new_password"), _form("confirm_password")
        error = None
        if not current or not new:
            error = "Fill in every field."
        elif new != confirm:
            error = "The two new passwords do not match."
        if error is None:
            try:
                accounts.change_password(dbs(), settings(), user, current, new, request.remote_addr)
            except accounts.LoginThrottled:
                dbs().commit()
                return page("password.html", 429, first=first, user=user, error=THROTTLED)
            except (accounts.AccountError, passwords.PasswordPolicyError) as exc:
                error = str(exc)
        if error is not None:
            dbs().commit()  # keeps the throttle count of a wrong current password
            return page("password.html", 400, first=first, user=user, error=error)
        end_other_sessions(dbs(), user.id, session)
        dbs().commit()
        session.pop(MUST_CHANGE_KEY, None)
        regenerate(session)
        target = after_login_target()
        if target == url_for("smart_auth.home"):
            return page("home.html", user=user, notice="Your password has been changed.")
        return redirect(target, 303)

    @bp.route("/logout", methods=["GET", "POST"])
    def logout() -> ResponseReturnValue:
        target = safe_next(request.values.get("next"))
        if target:
            g.form_action_extra = clients.origin_of(target)  # the form's redirect must pass the CSP
        if request.method == "GET":
            # Confirmation page (a GET never signs out: that would be a CSRF hole).
            return page("logout.html", next=target, user=current_user())
        user_id = session.get("uid")
        login_id = session.get(LOGIN_KEY)
        if isinstance(user_id, str):
            if isinstance(login_id, str):
                grants.revoke_login(dbs(), login_id)  # online access ends with the sign-in
            security_event(
                dbs(), subtype="logout", outcome="0", user_id=user_id, address=request.remote_addr, description="logout"
            )
            dbs().commit()
        end(session)
        return redirect(target or url_for("smart_auth.login", signed_out="1"), 303)

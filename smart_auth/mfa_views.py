"""The second-factor pages (/auth/mfa, /auth/mfa/enrol) and the security page (/auth/security).

After a correct password, ``login_views.hold_for_second_factor`` leaves the session
anonymous with "password accepted for user X at T". ``/auth/mfa`` then asks for a code
from the authenticator app or a recovery code; a user who must have a second factor and
has none is sent to ``/auth/mfa/enrol`` first (QR code and the secret in text; confirmed by
a code; the recovery codes are shown once). Either way the sign-in completes only then,
exactly as a password-only sign-in does (``login_views.complete_sign_in``).

A signed-in user replaces the authenticator or the recovery codes from ``/auth/security``,
after giving the password again (F4); the confirmation lasts ``REAUTH_SECONDS`` and one change.
Views are thin: ``smart_auth.mfa`` checks, stores and audits.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, make_response, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from smart_auth import accounts, device_cookies, mfa
from smart_auth.login_views import MFA_PENDING_KEY, THROTTLED, after_login_target, complete_sign_in
from smart_auth.models import UserAccount
from smart_auth.web_support import MUST_CHANGE_KEY, current_user, dbs, error_page, page, settings

ENROL_KEY = "mfa_enrol"  # the sealed secret of an enrolment waiting for its first code
REAUTH_KEY = "reauth_at"
REAUTH_SECONDS = 300
WRONG_CODE = "That code is not correct, or it was used already. Please try the next code."
WRONG_SETUP_CODE = "That code does not match. Check the time on your phone and try the current code."
MAX_FIELD = 256


def _form(name: str) -> str:
    value = request.form.get(name, "")
    return value if len(value) <= MAX_FIELD else ""


def _pending_user() -> UserAccount | None:
    """The user whose password this anonymous session accepted a few minutes ago, if any."""
    state = session.get(MFA_PENDING_KEY)
    if not isinstance(state, dict) or not isinstance(state.get("u"), str) or not isinstance(state.get("t"), int):
        return None
    if not 0 <= time.time() - state["t"] <= mfa.PENDING_SECONDS:
        return None
    user = accounts.get_user(dbs(), state["u"])
    return user if user is not None and user.active else None


def _reauth_fresh() -> bool:
    at = session.get(REAUTH_KEY)
    return isinstance(at, int) and 0 <= time.time() - at <= REAUTH_SECONDS


def _throttled(template: str, retry_after: int, **context: object) -> ResponseReturnValue:
    response = make_response(page(template, 429, error=THROTTLED, **context))
    response.headers["Retry-After"] = str(retry_after)
    return response


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _enrolment(user: UserAccount) -> mfa.Enrolment:
    """This session's enrolment secret (sealed in the session), made on first use."""
    state = session.get(ENROL_KEY)
    fresh = (
        isinstance(state, dict)
        and state.get("u") == user.id
        and isinstance(state.get("t"), int)
        and 0 <= time.time() - state["t"] <= mfa.ENROL_SECONDS
    )
    if fresh and isinstance(state, dict):
        secret = mfa.open_pending(settings(), user.id, state.get("s"))
        if secret is not None:
            return mfa.enrolment_for(settings(), user, secret)
    enrolment = mfa.new_enrolment(settings(), user)
    sealed = mfa.seal_pending(settings(), user.id, enrolment.secret)
    session[ENROL_KEY] = {"u": user.id, "t": int(time.time()), "s": sealed}
    return enrolment


def _device(user: UserAccount) -> str | None:
    """This browser's device-cookie nonce for the account (good standing, as for the password)."""
    entries = device_cookies.read(request.cookies.get(device_cookies.cookie_name(settings())), settings().secret_key)
    return device_cookies.nonce_for(entries, user.username)


def register(bp: Blueprint) -> None:
    @bp.route("/mfa", methods=["GET", "POST"], endpoint="mfa")
    def mfa_step() -> ResponseReturnValue:
        user = _pending_user()
        if user is None:
            return redirect(after_login_target() if current_user() else url_for("smart_auth.login"))
        if not mfa.is_enrolled(dbs(), user.id):
            return redirect(url_for("smart_auth.mfa_enrol"))
        if request.method == "GET":
            return page("mfa.html")
        try:
            kind = mfa.verify(dbs(), settings(), user, _form("code"), request.remote_addr, device=_device(user))
        except accounts.LoginThrottled as exc:
            dbs().commit()
            return _throttled("mfa.html", exc.retry_after)
        dbs().commit()
        if kind is None:
            return page("mfa.html", 400, error=WRONG_CODE)
        return complete_sign_in(user)

    @bp.route("/mfa/enrol", methods=["GET", "POST"])
    def mfa_enrol() -> ResponseReturnValue:
        signed_in = current_user()
        if signed_in is not None:
            user = signed_in
            if not mfa.offered(user):
                return error_page("Not available", "Two-step sign-in is not used for this account.", 404)
            if session.get(MUST_CHANGE_KEY):
                return redirect(url_for("smart_auth.password"))
            if not _reauth_fresh():
                return redirect(url_for("smart_auth.security"))
        else:
            pending = _pending_user()
            if pending is None:
                return redirect(url_for("smart_auth.login"))
            user = pending
            if mfa.is_enrolled(dbs(), user.id):
                # Replacing an authenticator needs a full sign-in first, never just the password.
                return redirect(url_for("smart_auth.mfa"))
        enrolment = _enrolment(user)
        context: dict[str, Any] = {
            "qr": Markup(mfa.qr_svg(enrolment.uri)),  # noqa: S704 - segno's SVG of our own URI
            "secret": _grouped(enrolment.secret),
            "first": signed_in is None,
        }
        if request.method == "GET":
            return page("mfa_enrol.html", **context)
        codes = mfa.confirm_enrolment(dbs(), settings(), user, enrolment.secret, _form("code"), request.remote_addr)
        dbs().commit()
        if codes is None:
            return page("mfa_enrol.html", 400, error=WRONG_SETUP_CODE, **context)
        session.pop(ENROL_KEY, None)
        if signed_in is None:
            return complete_sign_in(
                user, lambda target: page("mfa_recovery.html", codes=codes, next=target, first=True)
            )
        session.pop(REAUTH_KEY, None)
        return page("mfa_recovery.html", codes=codes, next=url_for("smart_auth.security"), first=False)

    @bp.route("/security", methods=["GET", "POST"])
    def security() -> ResponseReturnValue:
        user = current_user()
        if user is None:
            return redirect(url_for("smart_auth.login"))
        if session.get(MUST_CHANGE_KEY):
            return redirect(url_for("smart_auth.password"))
        context: dict[str, Any] = {
            "user": user,
            "offered": mfa.offered(user),
            "enrolled": mfa.is_enrolled(dbs(), user.id),
            "left": mfa.recovery_codes_left(dbs(), user.id),
            "required": mfa.needed_at_login(dbs(), settings(), user),
        }
        if request.method == "GET" or not context["offered"]:
            return page("security.html", fresh=_reauth_fresh(), **context)
        action = _form("action")
        if action == "reauth":
            try:
                ok = accounts.reauthenticate(dbs(), settings(), user, _form("password"), request.remote_addr)
            except accounts.LoginThrottled as exc:
                dbs().commit()
                return _throttled("security.html", exc.retry_after, fresh=False, **context)
            dbs().commit()
            if not ok:
                return page("security.html", 400, fresh=False, error="The password is not correct.", **context)
            session[REAUTH_KEY] = int(time.time())
            return redirect(url_for("smart_auth.security"), 303)
        if action == "recovery-codes" and context["enrolled"]:
            if not _reauth_fresh():
                return page("security.html", 400, fresh=False, error="Please enter your password first.", **context)
            codes = mfa.new_recovery_codes(dbs(), user)
            mfa.audit_new_recovery_codes(dbs(), user, request.remote_addr)
            dbs().commit()
            session.pop(REAUTH_KEY, None)
            return page("mfa_recovery.html", codes=codes, next=url_for("smart_auth.security"), first=False)
        return page("security.html", 400, fresh=_reauth_fresh(), error="Choose one of the actions below.", **context)

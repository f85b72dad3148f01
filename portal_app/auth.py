"""Sign-in for the two faces of the portal (patient portal and provider console).

Each face is a "realm" with its own OAuth client, scopes and callback; its tokens live
in the server-side session under ``realms[<name>]`` and never reach the browser.
``api(realm)`` hands a view a FHIR client with a fresh token, refreshing it when it is
about to expire; when that is impossible (or the API answers 401) the view raises
``LoginRequired`` and the user goes through the SMART launch again.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, redirect, request, session, url_for
from werkzeug.wrappers import Response

from portal_app import oauth
from portal_app.config import PortalConfig
from portal_app.fhir_api import ApiError, FhirApi

PATIENT_SCOPE = (
    "openid fhirUser launch/patient patient/Patient.rs patient/Practitioner.rs "
    "patient/Communication.cruds offline_access"
)
# offline_access: a provider's session outlives the 1-hour access token; refreshing keeps a
# long message being typed from ending in a sign-in redirect that would lose it.
CONSOLE_SCOPE = (
    "openid fhirUser user/Patient.cruds user/Practitioner.rs user/Communication.cruds user/Organization.rs "
    "offline_access"
)
log = logging.getLogger(__name__)
MAX_PENDING = 5
PENDING_SECONDS = 600


@dataclass(frozen=True)
class Realm:
    name: str  # "patient" | "console"
    client_id: str
    client_secret: str
    scope: str
    callback_path: str  # below /portal
    home_path: str  # below /portal


@dataclass(frozen=True)
class User:
    """Who is signed in to a realm, from the (unverified, display-only) token claims."""

    role: str
    fhir_user: str | None
    patient: str | None
    name: str

    @property
    def practitioner(self) -> str | None:
        return self.fhir_user if self.fhir_user and self.fhir_user.startswith("Practitioner/") else None


class LoginRequired(Exception):
    def __init__(self, realm: str) -> None:
        super().__init__(realm)
        self.realm = realm


class WrongAccount(Exception):
    """Signed in, but with an account that cannot use this face (e.g. a patient in the console)."""

    def __init__(self, realm: str) -> None:
        super().__init__(realm)
        self.realm = realm


def make_realms(config: PortalConfig) -> dict[str, Realm]:
    return {
        "patient": Realm(
            "patient", config.patient_client_id, config.patient_client_secret, PATIENT_SCOPE, "/callback", "/"
        ),
        "console": Realm(
            "console",
            config.console_client_id,
            config.console_client_secret,
            CONSOLE_SCOPE,
            "/console/callback",
            "/console/",
        ),
    }


def _config() -> PortalConfig:
    config: PortalConfig = current_app.extensions["portal.config"]
    return config


def _realm(name: str) -> Realm:
    realm: Realm = current_app.extensions["portal.realms"][name]
    return realm


def _discovery() -> oauth.Discovery:
    disc: oauth.Discovery = current_app.extensions["portal.discovery"]
    return disc


def redirect_uri(realm: Realm) -> str:
    return f"{_config().public_base}/portal{realm.callback_path}"


def _safe_next(path: str | None, realm: Realm) -> str:
    """Only a path inside this realm may be a post-login destination (no open redirect)."""
    prefix = "/portal/console/" if realm.name == "console" else "/portal/"
    if path and path.startswith(prefix) and "//" not in path and "\\" not in path:
        return path
    return "/portal" + realm.home_path


def remember_destination(realm_name: str, path: str) -> None:
    """Where to go after the next sign-in of this realm (kept server-side, never in a URL)."""
    dest = dict(session.get("destinations") or {})
    dest[realm_name] = path
    session["destinations"] = dest


def start_login(realm_name: str) -> Response:
    """Redirect to the authorization endpoint with state and an S256 PKCE challenge."""
    realm = _realm(realm_name)
    destinations = dict(session.get("destinations") or {})
    next_path = destinations.pop(realm_name, None)
    session["destinations"] = destinations
    endpoints = _discovery().endpoints()
    verifier, challenge = oauth.new_pkce()
    state = secrets.token_urlsafe(32)
    now = time.time()
    pending = {
        k: v
        for k, v in (session.get("pending") or {}).items()
        if isinstance(v, dict) and now - float(v.get("t", 0)) < PENDING_SECONDS
    }
    while len(pending) >= MAX_PENDING:
        pending.pop(min(pending, key=lambda k: pending[k]["t"]))
    pending[state] = {"realm": realm.name, "verifier": verifier, "next": _safe_next(next_path, realm), "t": now}
    session["pending"] = pending
    url = oauth.authorize_url(
        endpoints.authorize,
        client_id=realm.client_id,
        redirect_uri=redirect_uri(realm),
        scope=realm.scope,
        state=state,
        aud=_config().fhir_aud,
        code_challenge=challenge,
    )
    return redirect(url, 303)


def finish_login(realm_name: str) -> Response:
    """The callback: check state, exchange the code, keep the tokens server-side."""
    realm = _realm(realm_name)
    state = request.args.get("state", "")
    pending = dict(session.get("pending") or {})
    entry = pending.pop(state, None) if state else None
    session["pending"] = pending
    if not entry or entry.get("realm") != realm.name or time.time() - float(entry["t"]) > PENDING_SECONDS:
        raise oauth.OAuthError("This sign-in link has expired. Please sign in again.")
    if request.args.get("error"):
        raise oauth.OAuthError("Sign-in was cancelled or refused.")
    code = request.args.get("code")
    if not code:
        raise oauth.OAuthError("Sign-in failed: no authorization code.")
    endpoints = _discovery().endpoints()
    tokens = oauth.exchange_code(
        _discovery().backchannel(endpoints.token),
        realm.client_id,
        realm.client_secret,
        code,
        redirect_uri(realm),
        entry["verifier"],
    )
    # A new identity gets a new session id (no session fixation); the other realm stays signed in.
    current_app.session_interface.regenerate(session)  # type: ignore[attr-defined]
    _store(realm.name, tokens)
    return redirect(entry["next"], 303)


def _store(realm_name: str, tokens: oauth.Tokens) -> None:
    realms = dict(session.get("realms") or {})
    realms[realm_name] = tokens.to_session()
    session["realms"] = realms


def _forget(realm_name: str) -> None:
    realms = dict(session.get("realms") or {})
    realms.pop(realm_name, None)
    session["realms"] = realms


def current_user(realm_name: str) -> User | None:
    data = (session.get("realms") or {}).get(realm_name)
    if not data:
        return None
    claims = oauth.decode_claims(data.get("access_token", ""))
    fhir_user = claims.get("fhirUser")
    patient = data.get("patient") or claims.get("patient")
    if not patient and isinstance(fhir_user, str) and fhir_user.startswith("Patient/"):
        patient = fhir_user.split("/", 1)[1]
    return User(
        role=str(claims.get("role") or ""),
        fhir_user=fhir_user if isinstance(fhir_user, str) else None,
        patient=str(patient) if patient else None,
        name=str(claims.get("name") or ""),
    )


def token_expired(realm_name: str) -> bool:
    data = (session.get("realms") or {}).get(realm_name)
    return not data or oauth.Tokens.from_session(data).expired()


def api(realm_name: str) -> FhirApi:
    """A FHIR client with a valid token for this realm, or LoginRequired."""
    data = (session.get("realms") or {}).get(realm_name)
    if not data:
        raise LoginRequired(realm_name)
    tokens = oauth.Tokens.from_session(data)
    if tokens.expired():
        realm = _realm(realm_name)
        try:
            endpoints = _discovery().endpoints()
            tokens = oauth.refresh(
                _discovery().backchannel(endpoints.token), realm.client_id, realm.client_secret, tokens
            )
        except oauth.OAuthError as exc:
            _forget(realm_name)
            raise LoginRequired(realm_name) from exc
        _store(realm_name, tokens)
    return FhirApi(_config().api_base + "/fhir", tokens.access_token)


def call(realm_name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(api, ...)``; a 401 from the API means the grant is gone: sign in again."""
    client = api(realm_name)
    try:
        return fn(client, *args, **kwargs)
    except ApiError as exc:
        if exc.status == 401:
            _forget(realm_name)
            raise LoginRequired(realm_name) from exc
        raise


def logout() -> Response:
    """One click signs out everywhere, all of it server-side, then shows our signed-out page.

    For each realm: revoke its refresh token (RFC 7009: the whole grant ends, access tokens
    included) and end its sign-in at the authorization server (back-channel ``end-session``
    with the realm's id_token), so that the next "Sign in" asks for the password again; then
    the portal's own session goes. The browser is never sent to the authorization server's
    "sign out?" page: a user who stopped there would still be signed in. Best effort: a
    failure is logged (never a token) and the portal session is cleared all the same.
    """
    realms = dict(session.get("realms") or {})
    endpoints: oauth.Endpoints | None = None
    if realms:
        try:
            endpoints = _discovery().endpoints()
        except oauth.OAuthError:
            log.warning("logout: the authorization server cannot be reached; its sign-ins were not ended")
    for name, data in realms.items():
        realm = current_app.extensions["portal.realms"].get(name)
        if endpoints and realm and isinstance(data, dict):
            _end_sign_in(realm, data, endpoints)
    session.clear()  # empty: Flask-Session deletes the stored session and the cookie
    return redirect(url_for("patient.signed_out"), 303)


def _end_sign_in(realm: Realm, data: dict[str, Any], endpoints: oauth.Endpoints) -> None:
    """Revoke the realm's grant and end its sign-in at the authorization server (logged, never raised)."""
    disc = _discovery()
    refresh_token, access_token = data.get("refresh_token"), data.get("access_token")
    token, hint = (refresh_token, "refresh_token") if refresh_token else (access_token, "access_token")
    if not endpoints.revocation:
        log.warning("logout (%s): no revocation endpoint is advertised; the grant was not revoked", realm.name)
    elif (
        isinstance(token, str)
        and token
        and not oauth.revoke(disc.backchannel(endpoints.revocation), realm.client_id, realm.client_secret, token, hint)
    ):
        log.warning("logout (%s): revoking the grant failed", realm.name)
    id_token = data.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        log.warning("logout (%s): no id_token; the authorization server sign-in was not ended", realm.name)
    elif endpoints.end_session and not oauth.end_session(
        disc.backchannel(endpoints.end_session), realm.client_id, realm.client_secret, id_token
    ):
        log.warning("logout (%s): ending the authorization server sign-in failed", realm.name)


def add_sign_in_routes(bp: Blueprint, realm_name: str) -> None:
    """The sign-in routes of one face: GET /login and /callback, POST /logout (endpoints
    ``<face>.login``, ``<face>.callback`` and ``<face>.logout``)."""

    def login() -> Response:
        return start_login(realm_name)

    def callback() -> Response:
        return finish_login(realm_name)

    bp.add_url_rule("/login", "login", login, methods=["GET"])
    bp.add_url_rule("/callback", "callback", callback, methods=["GET"])
    bp.add_url_rule("/logout", "logout", logout, methods=["POST"])


def init_auth(app: Flask, config: PortalConfig) -> None:
    app.extensions["portal.config"] = config
    app.extensions["portal.realms"] = make_realms(config)
    app.extensions["portal.discovery"] = oauth.Discovery(config.public_base, config.api_base)

"""The authorize endpoint and its pages: login hand-off, patient picker, consent.

``/auth/authorize`` (GET or form POST) validates the request before anything else:
an unknown client, a redirect URI that is not registered exactly, or an ``aud`` that
is not this FHIR server gets an error page and no redirect; other errors go back to
the client with ``error`` and ``state``. A valid request waits in the server-side
session while the user signs in, picks a patient (providers and staff asking for a
patient context) and approves the scopes (third-party clients only). Each step ends
in ``/auth/authorize/continue``, which re-validates the request and either shows the
next page or issues the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError, InvalidScopeError, OAuth2Error
from flask import Blueprint, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from fhirserver.core.audit import security_event
from smart_auth import consent, launch, patient_picker, scope_policy
from smart_auth.models import OAuthClient, UserAccount
from smart_auth.oauth_server import Decision, SmartAuthorizationServer
from smart_auth.sessions import LOGIN_KEY
from smart_auth.web_support import (
    AUTH_TIME_KEY,
    MUST_CHANGE_KEY,
    PENDING_KEY,
    current_user,
    dbs,
    error_page,
    get_state,
    page,
)

AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
)
MAX_PARAM_LENGTH = 2048
# The pending request waits in a sealed cookie until sign-in (smart_auth.sessions): keep it small.
MAX_PENDING_CHARS = 2500
# RFC 6749 Appendix A: these parameters are printable ASCII (VSCHAR). Anything else (a NUL,
# a line break, non-ASCII) is refused here, before it reaches Authlib or a database query.
VSCHAR = re.compile(r"[\x20-\x7e]*")


@dataclass
class Evaluation:
    """Where a pending authorization request stands for the signed-in user."""

    grant: Any
    client: OAuthClient
    user: UserAccount
    scopes: list[str]
    needs_patient: bool
    patient: str | None
    pending: dict[str, Any]  # the request's record in the session (params, choices so far)


def _server() -> SmartAuthorizationServer:
    return get_state().server  # type: ignore[no-any-return]


def _collect_params() -> tuple[dict[str, str] | None, str | None]:
    source = request.form if request.method == "POST" else request.args
    params: dict[str, str] = {}
    for key in AUTHORIZE_PARAMS:
        values = source.getlist(key)
        if len(values) > 1:
            return None, f"The parameter '{key}' was sent more than once."
        if values:
            if len(values[0]) > MAX_PARAM_LENGTH:
                return None, f"The parameter '{key}' is too long."
            if not VSCHAR.fullmatch(values[0]):
                return None, f"The parameter '{key}' contains characters that are not allowed."
            params[key] = values[0]
    if sum(len(k) + len(v) for k, v in params.items()) > MAX_PENDING_CHARS:
        return None, "The request is too long."
    return params, None


def _oauth_error(error: OAuth2Error, params: dict[str, Any]) -> ResponseReturnValue:
    """Redirect the error to the client when its redirect URI is known to be good, else show it.

    The page never repeats what the request carried: Authlib's description of a bad
    redirect URI quotes the URI, so a description holding a parameter value is left out.
    """
    if error.redirect_uri:
        return _server().handle_response(*error())
    description = error.description or ""
    if any(isinstance(v, str) and v and v in description for v in params.values()):
        description = ""
    return error_page(
        "This sign-in link is not valid",
        "The application sent an authorization request this server cannot accept"
        + (f": {description}" if description else ".")
        + " No access was granted. Please return to the application and try again.",
        400,
    )


def _deny(ev: Evaluation, error: type[OAuth2Error] = AccessDeniedError, description: str = "") -> Any:
    session.pop(PENDING_KEY, None)
    err = error(
        description=description or None, redirect_uri=ev.grant.redirect_uri, state=ev.grant.request.payload.state
    )
    return _server().handle_response(*err())


def _pending() -> dict[str, Any] | None:
    pending = session.get(PENDING_KEY)
    if not isinstance(pending, dict) or not isinstance(pending.get("params"), dict):
        return None
    return pending


def _update_pending(**changes: Any) -> None:
    pending = dict(_pending() or {})
    pending.update(changes)
    session[PENDING_KEY] = pending  # reassign: nested changes would not mark the session modified


def _evaluate(pending: dict[str, Any], user: UserAccount) -> Evaluation | ResponseReturnValue:
    """Re-validate the pending request and compute scopes and patient context for ``user``."""
    try:
        grant = _server().get_consent_grant(request=pending["params"], end_user=user)
    except OAuth2Error as error:
        session.pop(PENDING_KEY, None)
        return _oauth_error(error, pending["params"])
    client: OAuthClient = grant.client.row
    requested = grant.request.payload.scope.split()
    scopes = scope_policy.grant(requested, client.scope, user.role)
    if "launch" not in pending["params"]:  # the launch scope means nothing without a launch
        scopes = [s for s in scopes if s != scope_policy.LAUNCH]
    ev = Evaluation(grant, client, user, scopes, scope_policy.needs_patient(scopes), None, pending)
    if not scopes:
        return _deny(ev, InvalidScopeError, "None of the requested scopes can be granted to this user.")
    if "launch" in pending["params"]:
        return _with_launch(ev)
    if ev.needs_patient:
        if user.role == "patient":
            if not (user.fhir_user or "").startswith("Patient/"):
                return _deny(ev, description="This account is not linked to a patient record.")
            ev.patient = (user.fhir_user or "").split("/", 1)[1]
        else:
            chosen = pending.get("patient")
            if isinstance(chosen, str) and patient_picker.may_pick(dbs(), user, chosen):
                ev.patient = chosen
    return ev


def _launch_of(ev: Evaluation) -> Any:
    return launch.find_live(dbs(), ev.pending["params"].get("launch"), ev.client.client_id)


def _with_launch(ev: Evaluation) -> Evaluation | ResponseReturnValue:
    """EHR launch (A10): the launch must still be live and have been minted by this user in this
    sign-in; its patient is the context (no picker). Anything else ends the request, no code."""
    row = _launch_of(ev)
    if scope_policy.LAUNCH not in ev.scopes:
        return _deny(ev, InvalidScopeError, "This application may not be launched from the console.")
    if row is None or not launch.belongs_to(row, ev.user.id, session.get(LOGIN_KEY)):
        security_event(
            dbs(),
            subtype="ehr-launch",
            outcome="4",
            user_id=ev.user.id,
            client_id=ev.client.client_id,
            address=request.remote_addr,
            description="launch refused: unknown, expired, used or of another sign-in",
        )
        dbs().commit()
        return _deny(ev, InvalidRequestError, "The launch is not valid for this sign-in. Launch the app again.")
    ev.patient = row.patient_id
    ev.needs_patient = True
    return ev


def _consented(ev: Evaluation) -> list[str] | None:
    """The scopes approved for a third-party client, or None when the consent page must be shown."""
    chosen = ev.pending.get("consented")
    if isinstance(chosen, list):
        # What the consent POST kept: offered scopes, or their read-only variants (never wider).
        allowed = set(ev.scopes) | {v for s in ev.scopes if (v := consent.read_only_variant(s))}
        return [s for s in chosen if isinstance(s, str) and s in allowed]
    stored = consent.granted(dbs(), ev.user.id, ev.client.client_id)
    if stored and set(ev.scopes) <= set(stored):
        return list(ev.scopes)
    return None


def _resume() -> Evaluation | ResponseReturnValue:
    """The pending request re-validated for the signed-in user, or the response that stops here:
    nothing pending, nobody signed in, a password change due, or a request no longer valid."""
    pending = _pending()
    if pending is None:
        return error_page(
            "No sign-in in progress",
            "There is no application waiting for your approval. Please start again from the application.",
            400,
        )
    user = current_user()
    if user is None:
        return redirect(url_for("smart_auth.login"), 303)
    if session.get(MUST_CHANGE_KEY):
        return redirect(url_for("smart_auth.password"), 303)
    return _evaluate(pending, user)


def proceed() -> ResponseReturnValue:
    """The next step of the pending request: login, picker, consent, or the code."""
    ev = _resume()
    if not isinstance(ev, Evaluation):
        return ev
    if ev.needs_patient and ev.patient is None:
        return redirect(url_for("smart_auth.authorize_patient"), 303)
    scopes = ev.scopes
    if not ev.client.first_party:
        approved = _consented(ev)
        if approved is None:
            return redirect(url_for("smart_auth.authorize_consent"), 303)
        scopes = approved
        if not scopes:
            return _deny(ev, description="No scopes were approved.")
    patient = ev.patient if scope_policy.needs_patient(scopes) else None
    # An EHR launch whose ``launch`` scope the user unticked at consent runs without its context.
    ehr_launch = "launch" in ev.pending["params"] and "launch" in scopes
    if ehr_launch:
        row = _launch_of(ev)
        if row is None or not launch.claim(dbs(), row):  # single use (A10)
            return _deny(ev, InvalidRequestError, "The launch is not valid for this sign-in. Launch the app again.")
        patient = row.patient_id
    auth_time = session.get(AUTH_TIME_KEY)
    login_id = session.get(LOGIN_KEY)
    decision = Decision(
        user=ev.user,
        scopes=scopes,
        patient=patient,
        auth_time=auth_time if isinstance(auth_time, int) else 0,
        login_id=login_id if isinstance(login_id, str) else None,
        ehr_launch=ehr_launch,
    )
    response = _server().create_authorization_response(request=ev.grant.request, grant_user=decision, grant=ev.grant)
    dbs().commit()
    session.pop(PENDING_KEY, None)
    return response  # type: ignore[no-any-return]


def register(bp: Blueprint) -> None:
    @bp.route("/authorize", methods=["GET", "POST"])
    def authorize() -> ResponseReturnValue:
        params, problem = _collect_params()
        if params is None:
            return error_page("This sign-in link is not valid", (problem or "") + " No access was granted.")
        try:
            _server().get_consent_grant(request=params, end_user=None)
        except OAuth2Error as error:
            return _oauth_error(error, params)
        session[PENDING_KEY] = {"params": params}
        return proceed()

    @bp.get("/authorize/continue")
    def authorize_continue() -> ResponseReturnValue:
        return proceed()

    @bp.route("/authorize/patient", methods=["GET", "POST"])
    def authorize_patient() -> ResponseReturnValue:
        ev = _resume()
        if not isinstance(ev, Evaluation):
            return ev
        user = ev.user
        if not ev.needs_patient or user.role == "patient":
            return redirect(url_for("smart_auth.authorize_continue"), 303)
        if request.method == "POST":
            if request.form.get("action") != "continue":
                return _deny(ev, description="No patient was chosen.")
            chosen = request.form.get("patient", "")
            if len(chosen) <= 64 and patient_picker.may_pick(dbs(), user, chosen):
                _update_pending(patient=chosen)
                return redirect(url_for("smart_auth.authorize_continue"), 303)
            error = "Choose one of the listed patients."
            status = 400
        else:
            error, status = None, 200
        patients = patient_picker.patients_for(dbs(), user)
        return page("picker.html", status, client=ev.client, patients=patients, error=error)

    @bp.route("/authorize/consent", methods=["GET", "POST"])
    def authorize_consent() -> ResponseReturnValue:
        ev = _resume()
        if not isinstance(ev, Evaluation):
            return ev
        user = ev.user
        if ev.client.first_party:
            return redirect(url_for("smart_auth.authorize_continue"), 303)
        if ev.needs_patient and ev.patient is None:
            return redirect(url_for("smart_auth.authorize_patient"), 303)
        if request.method == "POST":
            # Never widens (A12): unticked scopes go, "read only" narrows a scope to r and s.
            chosen = consent.kept(ev.scopes, request.form.getlist("scope"), request.form.getlist("read_only"))
            if request.form.get("action") != "approve" or not chosen:
                security_event(
                    dbs(),
                    subtype="consent",
                    outcome="4",
                    user_id=user.id,
                    client_id=ev.client.client_id,
                    address=request.remote_addr,
                    description="authorization denied by the user",
                )
                dbs().commit()
                return _deny(ev, description="The user denied the request.")
            consent.record(dbs(), user.id, ev.client.client_id, chosen)
            security_event(
                dbs(),
                subtype="consent",
                outcome="0",
                user_id=user.id,
                client_id=ev.client.client_id,
                address=request.remote_addr,
                description=f"consent recorded for {len(chosen)} of {len(ev.scopes)} scopes",
            )
            dbs().commit()
            _update_pending(consented=chosen)
            return redirect(url_for("smart_auth.authorize_continue"), 303)
        patient_name = None
        if ev.patient and user.role != "patient":
            names = {p.id: p.name for p in patient_picker.patients_for(dbs(), user)}
            patient_name = names.get(ev.patient)
        items = [(s, scope_policy.describe(s)) for s in ev.scopes]
        return page(
            "consent.html",
            client=ev.client,
            items=items,
            notes=consent.notes(ev.scopes),
            read_only={s: v for s in ev.scopes if (v := consent.read_only_variant(s))},
            patient_name=patient_name,
            offline="offline_access" in ev.scopes,
            own_record=user.role == "patient",
        )

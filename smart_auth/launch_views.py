"""The EHR-launch API of the authorization server, for the provider console (a SMART app itself).

The console never touches the database: it asks over HTTP with its own access token.

- ``GET /auth/apps``: the registered SMART apps that support the EHR launch (client id,
  name, launch URL).
- ``POST /auth/launch`` (JSON ``{"client_id": ..., "patient": ...}``): mints a launch id
  (``smart_auth.launch``) for that app and patient, and answers it with the app's launch
  URL carrying ``iss`` and ``launch``, where the console sends the browser.
- ``GET /auth/smart-style.json``: the styling document named by ``smart_style_url`` (A14).

Who may mint (A10): a token of a first-party client (our console: third-party apps never
mint launches for other apps) whose grant is live, of a provider or staff user, in a
sign-in that still stands (the launch is bound to it). The patient must be one the user
may read right now: the check is a FHIR read of ``Patient/{id}`` through the repository
with the token's Principal, so that the API's one access policy (relationships,
break-glass) decides, and a patient outside it is answered 404 as the API would.
Errors are RFC 6749/6750-style JSON; no response or audit record carries the launch id.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import RAISE, Schema, ValidationError, validate
from marshmallow import fields as mf

from fhirserver.core.audit import security_event
from fhirserver.core.errors import FhirError
from fhirserver.core.ports import Identity, TokenRejected
from fhirserver.core.principal import Principal
from fhirserver.core.repository import Repository
from fhirserver.core.scopes import ScopeSet
from smart_auth import clients, grants, launch
from smart_auth.models import OAuthClient
from smart_auth.resource_server import SmartTokenAuthority
from smart_auth.web_support import dbs, settings

LAUNCHING_ROLES = frozenset({"provider", "staff"})
FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"
MAX_HEADER = 8192


class LaunchRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    client_id = mf.String(required=True, validate=validate.Length(min=1, max=100))
    patient = mf.String(required=True, validate=validate.Regexp(f"^{FHIR_ID}$"))


class Refused(Exception):
    """An API refusal: HTTP status, OAuth error code and a fixed description (no values)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _refusal(exc: Refused) -> ResponseReturnValue:
    response = jsonify({"error": exc.error, "error_description": exc.description})
    response.status_code = exc.status
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = f'Bearer realm="auth", error="{exc.error}"'
    return response


def _token_authority() -> SmartTokenAuthority:
    tokens: SmartTokenAuthority = current_app.extensions.setdefault(
        "smart_auth.launch_tokens", SmartTokenAuthority(settings())
    )
    return tokens


def _principal(identity: Identity) -> Principal:
    """The token's Principal, built as the FHIR API builds it (``fhirserver.web.bearer``)."""
    claims = identity.claims
    return Principal(
        role=str(claims.get("role", "")),
        scopes=ScopeSet.parse(str(claims.get("scope", ""))),
        user_id=str(claims["sub"]),
        fhir_user=claims.get("fhirUser"),
        client_id=claims.get("client_id"),
        patient=claims.get("patient"),
        staff_of=identity.staff_of,
        break_glass=identity.break_glass,
        address=request.remote_addr,
        token_jti=claims.get("jti"),
    )


def _console_caller() -> tuple[Identity, Principal]:
    """The bearer token of a provider or staff user of a first-party client, with a live grant."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(header) > MAX_HEADER:
        raise Refused(401, "invalid_token", "A valid access token is required.")
    try:
        identity = _token_authority().authenticate(dbs(), token.strip())
    except TokenRejected:
        raise Refused(401, "invalid_token", "A valid access token is required.") from None
    principal = _principal(identity)
    client = clients.get_client(dbs(), principal.client_id)
    if principal.role not in LAUNCHING_ROLES or client is None or not client.first_party:
        raise Refused(403, "insufficient_scope", "Only the provider console may launch apps.")
    return identity, principal


def _launchable(client: OAuthClient | None) -> bool:
    return client is not None and bool(client.launch_url) and not clients.is_backend(client)


def _apps() -> ResponseReturnValue:
    _console_caller()
    rows = dbs().query(OAuthClient).filter(OAuthClient.launch_url.isnot(None)).all()
    apps = [
        {"client_id": c.client_id, "name": c.name, "launch_url": c.launch_url}
        for c in sorted(rows, key=lambda c: (c.name.casefold(), c.client_id))
        if _launchable(c)
    ]
    dbs().rollback()  # read only
    return jsonify({"apps": apps})


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise Refused(400, "invalid_request", "The body must be a JSON object with client_id and patient.")
    try:
        loaded: dict[str, Any] = LaunchRequestSchema().load(data)
    except ValidationError:
        raise Refused(400, "invalid_request", "The body must be a JSON object with client_id and patient.") from None
    return loaded


def _check_patient(principal: Principal, patient: str) -> None:
    """The user may read this Patient now (the API's own policy), else a 404-equivalent refusal."""
    try:
        Repository(dbs(), settings(), principal).read("Patient", patient)
    except FhirError:
        security_event(
            dbs(),
            subtype="ehr-launch",
            outcome="4",
            principal=principal,
            address=request.remote_addr,
            patient_ref=f"Patient/{patient}",
            description="EHR launch refused: patient outside the grant",
        )
        dbs().commit()
        raise Refused(404, "not_found", "No such patient.") from None


def _mint() -> ResponseReturnValue:
    identity, principal = _console_caller()
    body = _body()
    app_client = clients.get_client(dbs(), body["client_id"])
    if app_client is None or not _launchable(app_client):
        raise Refused(400, "invalid_request", "This app does not support the EHR launch.")
    grant = grants.get(dbs(), str(identity.claims.get("gid")))
    login_id = grant.login_id if grant is not None else None
    if login_id is None or not launch.login_is_live(dbs(), settings(), login_id):
        # The launch is bound to a browser sign-in: without one, the console signs in again.
        raise Refused(401, "invalid_token", "The sign-in has ended. Please sign in again.")
    _check_patient(principal, body["patient"])
    value = launch.create(
        dbs(),
        launch.NewLaunch(
            user_id=str(principal.user_id),
            login_id=login_id,
            client_id=app_client.client_id,
            patient_id=body["patient"],
        ),
    )
    security_event(
        dbs(),
        subtype="ehr-launch",
        outcome="0",
        principal=principal,
        address=request.remote_addr,
        patient_ref=f"Patient/{body['patient']}",
        description="EHR launch started",
    )
    dbs().commit()
    url = launch.launch_url(str(app_client.launch_url), settings().fhir_base, value)
    return jsonify({"launch": value, "launch_url": url, "expires_in": launch.LAUNCH_LIFETIME_SECONDS})


def _style() -> ResponseReturnValue:
    response = jsonify(launch.SMART_STYLE)
    response.headers["Access-Control-Allow-Origin"] = "*"  # fetched by apps in the browser
    return response


def _guarded(view: Any) -> Any:
    def run() -> ResponseReturnValue:
        try:
            return view()  # type: ignore[no-any-return]
        except Refused as exc:
            dbs().rollback()
            return _refusal(exc)

    return run


def register(bp: Blueprint) -> None:
    bp.add_url_rule("/apps", "ehr_apps", _guarded(_apps), methods=["GET"])
    bp.add_url_rule("/launch", "ehr_launch", _guarded(_mint), methods=["POST"])
    bp.add_url_rule("/smart-style.json", "smart_style", _style, methods=["GET"])

"""The login server's Flask wiring: ``init_auth(app, settings)``.

Registers the ``/auth`` blueprint (login, logout, password, authorize and its pages,
token, revocation, introspection, back-channel end of a sign-in, JWKS), SMART
discovery at ``/.well-known/smart-configuration`` and under the FHIR base, the session
interface, CSRF checks on every form, and the security headers of the login pages.
Protocol logic lives in ``oauth_server`` and the plain modules; this file only
connects them to Flask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import Blueprint, Flask, Response, g, jsonify, request, session
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect

from fhirserver.config import Settings
from fhirserver.core.ports import AllowedOrigins
from smart_auth import (
    authorize_views,
    clients,
    cors_origins,
    discovery,
    end_session,
    launch_views,
    login_views,
    mfa_views,
    signing_keys,
    tokens,
)
from smart_auth.oauth_server import SmartAuthorizationServer, parse_basic_auth
from smart_auth.sessions import DatabaseSessionInterface
from smart_auth.web_support import PENDING_KEY, dbs, error_page, get_state

# Endpoints that cannot carry our CSRF token: the token, revocation, introspection and
# end-session endpoints are called by apps (authenticated by client credentials), and the
# first authorize request arrives from the app's page (it only starts a flow; every
# approval form is protected).
CLIENT_ENDPOINTS = frozenset(
    {"smart_auth.token", "smart_auth.revoke", "smart_auth.introspect", "smart_auth.end_session"}
    | {"smart_auth.ehr_launch"}  # the console's bearer-token call (smart_auth.launch_views)
)
CSRF_EXEMPT = CLIENT_ENDPOINTS | {"smart_auth.authorize"}


@dataclass
class AuthState:
    settings: Settings
    server: SmartAuthorizationServer
    csrf: CSRFProtect
    origins: AllowedOrigins


def _form_action_sources() -> list[str]:
    """Where forms on this page may lead: ourselves and the redirect of the pending request.

    Browsers apply ``form-action`` to the redirects that follow a form submission, and
    the consent form ends in a redirect to the client's registered redirect URI.
    """
    out = ["'self'"]
    pending = session.get(PENDING_KEY)
    if isinstance(pending, dict) and isinstance(pending.get("params"), dict):
        origin = clients.origin_of(str(pending["params"].get("redirect_uri", "")))
        if origin:
            out.append(origin)
    extra = getattr(g, "form_action_extra", None)
    if extra:
        out.append(extra)
    return out


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; "
        "form-action " + " ".join(dict.fromkeys(_form_action_sources()))
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    # HSTS: fhirserver.security_headers, on every path of the origin.
    if request.endpoint == "smart_auth.static":
        response.headers["Cache-Control"] = "public, max-age=3600"
    elif request.endpoint in ("smart_auth.jwks", "smart_auth.openid_configuration"):
        # A new signing key is published at least this long before it signs (signing_keys).
        response.headers["Cache-Control"] = f"public, max-age={signing_keys.JWKS_MAX_AGE}"
    else:
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def _token_request_client_id() -> str | None:
    creds = parse_basic_auth(request.headers.get("Authorization"))
    if creds is not None:
        return creds[0]
    return request.form.get("client_id") or None


def _token_cors(response: Response) -> Response:
    """CORS for browser-based apps at the token and revocation endpoints (A6): only the
    origins of the calling client's redirect URIs (plus CORS_ORIGINS). A preflight names
    no client, so it is answered for the whole allowlist (a cached set, no query); the
    POST itself is then checked against its client. Introspection is for resource
    servers, which are confidential and never run in a browser: no CORS there."""
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin:
        return response
    state = get_state()
    if request.method == "OPTIONS":
        allowed = state.origins.is_allowed(origin)
    else:
        client = clients.get_client(dbs(), _token_request_client_id())
        allowed = cors_origins.client_allows(client, origin, state.settings)
    if allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def _smart_configuration() -> Response:
    response = jsonify(discovery.smart_configuration(get_state().settings))
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def create_blueprint() -> Blueprint:
    bp = Blueprint(
        "smart_auth",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    @bp.before_request
    def _csrf() -> None:
        if request.method == "POST" and request.endpoint not in CSRF_EXEMPT:
            get_state().csrf.protect()

    @bp.after_request
    def _headers(response: Response) -> Response:
        if request.endpoint in ("smart_auth.token", "smart_auth.revoke"):
            _token_cors(response)
        return _security_headers(response)

    @bp.errorhandler(CSRFError)
    def _csrf_failed(_: CSRFError) -> ResponseReturnValue:
        return error_page(
            "This form has expired",
            "The form was open too long or did not come from this site. Please go back, reload the page and try again.",
            400,
        )

    @bp.context_processor
    def _context() -> dict[str, Any]:
        return {"office_name": get_state().settings.office_name}

    @bp.route("/token", methods=["POST", "OPTIONS"])
    def token() -> ResponseReturnValue:
        if request.method == "OPTIONS":
            return Response(status=204)
        server = get_state().server
        try:
            response = server.create_token_response()
        except OAuth2Error as error:  # raised before Authlib's own handling (e.g. insecure transport)
            response = server.handle_error_response(None, error)
        dbs().commit()  # also keeps a claimed code/refresh token and audit rows of failures
        return response  # type: ignore[no-any-return]

    @bp.post("/revoke")
    def revoke() -> ResponseReturnValue:
        response = get_state().server.create_endpoint_response("revocation")
        dbs().commit()
        return response  # type: ignore[no-any-return]

    @bp.post("/introspect")
    def introspect() -> ResponseReturnValue:
        response = get_state().server.create_endpoint_response("introspection")
        dbs().rollback()  # introspection only reads
        return response  # type: ignore[no-any-return]

    bp.add_url_rule("/end-session", "end_session", end_session.end_session, methods=["POST"])

    @bp.get("/jwks")
    def jwks() -> ResponseReturnValue:
        response = jsonify(tokens.jwks(get_state().settings))
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    @bp.get("/.well-known/openid-configuration")
    def openid_configuration() -> ResponseReturnValue:
        response = jsonify(discovery.openid_configuration(get_state().settings))
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    login_views.register(bp)
    mfa_views.register(bp)
    authorize_views.register(bp)
    launch_views.register(bp)
    return bp


def init_auth(app: Flask, settings: Settings, *, origins: AllowedOrigins) -> None:
    """Install the login server into ``app`` (the FHIR API app); ``origins`` is the CORS
    allowlist shared with /fhir (one cache per process)."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # checked by the /auth blueprint only
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)  # Referrer-Policy no-referrer: no Referer to check
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", 3600)
    csrf = CSRFProtect(app)
    app.session_interface = DatabaseSessionInterface(settings)
    signing_keys.key_ring(settings)  # a bad or missing signing key stops the start, not the first login
    server = SmartAuthorizationServer(app, settings)
    app.extensions["smart_auth"] = AuthState(settings=settings, server=server, csrf=csrf, origins=origins)
    app.register_blueprint(create_blueprint(), url_prefix="/auth")
    app.add_url_rule("/.well-known/smart-configuration", "smart_configuration", _smart_configuration)
    app.add_url_rule("/fhir/.well-known/smart-configuration", "fhir_smart_configuration", _smart_configuration)

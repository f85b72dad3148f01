"""The portal application factory: patient portal at /portal/, provider console at /portal/console/.

The portal is a SMART app like any other: it reaches the API and the authorization
server over HTTP with its own OAuth clients, and imports nothing from them. It is
mounted under /portal by ``fhirserver.wsgi`` (so SCRIPT_NAME is /portal).
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from portal_app import auth
from portal_app.config import PortalConfig
from portal_app.fhir_api import ApiError
from portal_app.oauth import OAuthError
from portal_app.security import install_security_headers
from portal_app.sessions import install_sessions
from portal_app.webmail import format_when

log = logging.getLogger(__name__)


def create_portal_app(config: PortalConfig) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key,
        MAX_CONTENT_LENGTH=256 * 1024,
        # Tokens are tied to the server-side session; the idle timeout bounds their life.
        WTF_CSRF_TIME_LIMIT=None,
        # Referrer-Policy: no-referrer means browsers send no Referer to check against.
        WTF_CSRF_SSL_STRICT=False,
        TEMPLATES_AUTO_RELOAD=config.dev_mode,
    )
    install_sessions(app, config)
    CSRFProtect(app)
    install_security_headers(app, config.base_url)
    auth.init_auth(app, config)

    from portal_app.console_views import bp as console_bp
    from portal_app.patient_views import bp as patient_bp

    app.register_blueprint(patient_bp)
    app.register_blueprint(console_bp)
    app.jinja_env.add_extension("jinja2.ext.do")
    app.jinja_env.filters["when"] = format_when
    app.jinja_env.globals["ref_id"] = lambda ref: (ref or "").partition("/")[2]
    _install_error_handlers(app)
    return app


def _realm_of_request() -> str:
    return "console" if (request.blueprint or "") == "console" else "patient"


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(auth.LoginRequired)
    def _login_required(exc: auth.LoginRequired) -> Response | tuple[Response, int]:
        if request.endpoint == "console.alerts_json":
            return jsonify({"error": "signed-out"}), 401
        if request.method == "GET":
            # Come back to the same page after signing in (a path only: ids are not PHI).
            auth.remember_destination(exc.realm, request.script_root + request.path)
        return redirect(url_for(f"{exc.realm}.login"), 303)

    @app.errorhandler(auth.WrongAccount)
    def _wrong_account(exc: auth.WrongAccount) -> tuple[str, int]:
        return render_template("wrong_account.html", realm=exc.realm), 403

    @app.errorhandler(OAuthError)
    def _oauth_error(exc: OAuthError) -> tuple[str, int]:
        return _error_page(exc.status, "Sign-in problem", str(exc))

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError) -> tuple[str, int]:
        return _error_page(
            400,
            "This form has expired",
            "For your security the form could not be accepted. Please go back, reload the page and try again.",
        )

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[str, int]:
        if exc.status == 404:
            return _error_page(404, "Not found", exc.text)
        if exc.status == 403:
            return _error_page(403, "Not allowed", exc.text)
        if exc.status < 500:
            return _error_page(exc.status, "Request not accepted", exc.text)
        log.warning("FHIR API unavailable (status %s)", exc.status)
        return _error_page(502, "Service unavailable", "The service is not available right now. Please try again.")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[str, int]:
        return _error_page(exc.code or 500, exc.name, exc.description or "")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[str, int]:
        # The type only: an exception's message might carry data from the request.
        log.error("portal error on %s: %s", request.endpoint, type(exc).__name__)
        return _error_page(500, "Something went wrong", "Please try again. If this continues, call the office.")


def _error_page(status: int, title: str, text: str) -> tuple[str, int]:
    return (
        render_template("error.html", status=status, title=title, text=text, realm=_realm_of_request()),
        status,
    )

"""The /fhir blueprint: adapts Flask requests to the core's router and back.

All FHIR logic lives in fhirserver.core; this module only reads the HTTP request,
authenticates the bearer token, calls ``dispatch`` and writes the HTTP response.

Every response under /fhir is an OperationOutcome on error, whichever layer produced
it: the router's FhirErrors, Werkzeug's routing errors (a method no route takes, a
path no route matches) and unexpected exceptions (``install_fhir_error_pages``), and
gunicorn's own refusals (``fhirserver.gunicorn_worker``). The token is checked first:
without a valid one the answer is 401, before any format check (406, 415) or routing
detail could say anything about the request.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from fhirserver.core import audit
from fhirserver.core.errors import FhirError
from fhirserver.core.http import FhirRequest, FhirResponse
from fhirserver.core.patch import PATCH_MEDIA_TYPE
from fhirserver.core.ports import AllowedOrigins, TokenAuthority
from fhirserver.core.router import dispatch, error_response, match
from fhirserver.db import without_transaction
from fhirserver.extensions import db
from fhirserver.web.bearer import principal_from_header
from fhirserver.web.cors import install_cors

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}


class FhirHttpResponse(Response):
    """A Flask response that keeps ``Last-Modified`` on a 304.

    Werkzeug drops every entity header from a 304; RFC 7232 (4.1) allows ``Last-Modified``
    there for cache validation, and FHIR clients that revalidate by date read it.
    """

    def get_wsgi_headers(self, environ: WSGIEnvironment) -> Headers:
        headers = super().get_wsgi_headers(environ)
        if self.status_code == 304 and "Last-Modified" in self.headers:
            headers["Last-Modified"] = self.headers["Last-Modified"]
        return headers


def _pretty(body: bytes) -> bytes:
    """``_pretty=true``: the same JSON, indented (stored bytes are compact)."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False).encode()
    except ValueError:
        return body


def _to_flask(resp: FhirResponse, request_id: str) -> Response:
    body = resp.body
    if body and request.args.get("_pretty") == "true" and "json" in resp.content_type:
        body = _pretty(body)
    out = FhirHttpResponse(body, status=resp.status, content_type=resp.content_type if body else None)
    for k, v in resp.headers.items():
        out.headers[k] = v
    out.headers["X-Request-Id"] = request_id
    # FHIR responses may carry PHI: never cache them anywhere.
    out.headers["Cache-Control"] = "no-store"
    out.headers["X-Content-Type-Options"] = "nosniff"
    return out


def _check_format() -> None:
    try:  # Werkzeug would replace bytes that are not UTF-8 and search for the replacement character
        unquote_to_bytes(request.query_string.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FhirError(400, "invalid", "The query string is not UTF-8") from exc
    fmt = request.args.get("_format")
    if fmt and fmt not in ("json", "application/json", "application/fhir+json"):
        raise FhirError(406, "not-supported", "Only JSON is supported")
    accept = request.headers.get("Accept", "")
    if accept and "xml" in accept and "json" not in accept and "*/*" not in accept:
        raise FhirError(406, "not-supported", "Only JSON is supported")
    if request.method == "PATCH":
        if (request.mimetype or "").lower() != PATCH_MEDIA_TYPE:
            hint = f"Send a JSON Patch as {PATCH_MEDIA_TYPE} (FHIRPath Patch is not supported)"
            raise FhirError(415, "not-supported", hint)
        return
    if request.method in ("POST", "PUT") and not request.path.endswith("/_search") and request.content_length:
        ctype = (request.mimetype or "").lower()
        if ctype not in JSON_TYPES and not request.path.rsplit("/", 1)[-1].startswith("$"):
            raise FhirError(415, "not-supported", "Send FHIR resources as application/fhir+json")
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):  # FHIR JSON is UTF-8; the body is read as UTF-8
            raise FhirError(415, "not-supported", "Send FHIR resources in UTF-8 (charset=utf-8)")


class AnyPathConverter(BaseConverter):
    """Like ``path``, but also matches line breaks (Werkzeug's ``.`` does not), so that an id
    with CR/LF reaches our error path instead of Werkzeug's HTML 404."""

    regex = r"[^/][\s\S]*?"
    part_isolating = False


METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


class NoOrigins:
    """An empty CORS allowlist: only the discovery documents answer other origins."""

    def is_allowed(self, origin: str) -> bool:
        return False


def create_fhir_blueprint(tokens: TokenAuthority, origins: AllowedOrigins | None = None) -> Blueprint:
    """The /fhir blueprint; ``tokens`` verifies bearer tokens and checks their grants,
    ``origins`` says which browser origins CORS allows (fhirserver.web.cors)."""
    bp = Blueprint("fhir", __name__)
    install_cors(bp, origins or NoOrigins())

    @bp.record_once
    def _converter(state: object) -> None:
        state.app.url_map.converters["anypath"] = AnyPathConverter  # type: ignore[attr-defined]

    @bp.route("/", defaults={"path": ""}, methods=METHODS)
    @bp.route("/<anypath:path>", methods=METHODS)
    def fhir(path: str) -> Response:
        settings = current_app.extensions["fhirserver.settings"]
        rid = request.headers.get("X-Request-Id", "")
        request_id = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        session = db.session()
        try:
            principal = None
            # Routed once here; a method the path does not take (405) is raised after the
            # token check and before the format checks.
            route_error: FhirError | None = None
            try:
                route = match(request.method, path)
            except FhirError as exc:
                route, route_error = None, exc
            # A plain read (GET [type]/[id]): its own query may check the token's grant.
            plain_read = route is not None and route[0] == "read"
            if plain_read:
                without_transaction(session)
            if not (request.method == "GET" and path.strip("/") == "metadata"):
                try:
                    principal = principal_from_header(
                        request.headers.get("Authorization"),
                        session,
                        tokens,
                        request.remote_addr,
                        request_id,
                        defer_grant=plain_read,
                    )
                except FhirError as exc:
                    if exc.status == 401:
                        _audit_refused(request.remote_addr, request.headers.get("Authorization") is not None)
                    raise
            try:
                if route_error is not None:
                    raise route_error
                _check_format()
            except FhirError:
                if principal is not None and principal.pending is not None:
                    principal.pending.settle(session)  # a revoked token is 401 whatever else is wrong
                raise
            body = request.get_data(cache=False) if request.method in ("POST", "PUT", "PATCH") else b""
            req = FhirRequest(
                method=request.method,
                path=path,
                query=list(request.args.items(multi=True)),
                body=body,
                headers={k.lower(): v for k, v in request.headers.items()},
                base_url=settings.fhir_base,
            )
            resp = dispatch(req, session, settings, principal)
        except RequestEntityTooLarge:
            resp = error_response(FhirError(413, "too-costly", "The request body is too large"))
        except FhirError as exc:
            resp = error_response(exc)
        return _to_flask(resp, request_id)

    return bp


def _outcome_for(exc: HTTPException) -> Response:
    code = exc.code or 500
    issue = (
        "too-costly"
        if code in (413, 414, 431)
        else "not-supported"
        if code in (405, 415)
        else "not-found"
        if code == 404
        else "exception"
        if code >= 500
        else "invalid"
    )
    # Werkzeug's descriptions are fixed texts; they never quote the request.
    err = FhirError(code, issue, exc.name if code >= 500 else (exc.description or exc.name))
    response = _to_flask(error_response(err), uuid.uuid4().hex)
    for name, value in exc.get_headers():
        if name.lower() == "allow":  # a 405 says which methods the path takes
            response.headers["Allow"] = value
    return response


def _under_fhir() -> bool:
    return request.path == "/fhir" or request.path.startswith("/fhir/")


def install_fhir_error_pages(app: Flask) -> None:
    """Errors raised outside the FHIR view (routing, unexpected exceptions) under /fhir are
    OperationOutcomes too; everywhere else Flask's own pages stay."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        return _outcome_for(exc) if _under_fhir() else exc

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response | HTTPException:
        # The class name only: an exception's text may quote request data.
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.endpoint)
        if _under_fhir():
            db.session.rollback()
            return _outcome_for(InternalServerError())
        return InternalServerError()


def _audit_refused(address: str | None, had_token: bool) -> None:
    """Refused requests are audited (without the token itself)."""
    try:
        db.session.rollback()
        audit.security_event(
            db.session(),
            subtype="fhir-unauthorized",
            outcome="4",
            address=address,
            description="bearer token invalid" if had_token else "no bearer token",
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("could not audit a refused request")

"""The /fhir blueprint: adapts Flask requests to the core's router and back.

All FHIR logic lives in fhirserver.core; this module only reads the HTTP request,
authenticates the bearer token, calls ``dispatch`` and writes the HTTP response.
"""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from fhirserver.core import audit
from fhirserver.core.errors import FhirError
from fhirserver.core.http import FhirRequest, FhirResponse
from fhirserver.core.router import dispatch, error_response, match
from fhirserver.extensions import db
from fhirserver.web.bearer import principal_from_header

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}


def _to_flask(resp: FhirResponse, request_id: str) -> Response:
    out = Response(resp.body, status=resp.status, content_type=resp.content_type if resp.body else None)
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
    if request.method in ("POST", "PUT") and not request.path.endswith("/_search") and request.content_length:
        ctype = (request.mimetype or "").lower()
        if ctype not in JSON_TYPES and not request.path.rsplit("/", 1)[-1].startswith("$"):
            raise FhirError(415, "not-supported", "Send FHIR resources as application/fhir+json")
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):  # FHIR JSON is UTF-8; the body is read as UTF-8
            raise FhirError(415, "not-supported", "Send FHIR resources in UTF-8 (charset=utf-8)")


def create_fhir_blueprint() -> Blueprint:
    bp = Blueprint("fhir", __name__)

    @bp.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    @bp.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def fhir(path: str) -> Response:
        settings = current_app.extensions["fhirserver.settings"]
        rid = request.headers.get("X-Request-Id", "")
        request_id = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        session = db.session()
        try:
            match(request.method, path)  # a method the path does not take is a 405 before anything else
            _check_format()
            body = request.get_data(cache=False) if request.method in ("POST", "PUT", "PATCH") else b""
            req = FhirRequest(
                method=request.method,
                path=path,
                query=list(request.args.items(multi=True)),
                body=body,
                headers={k.lower(): v for k, v in request.headers.items()},
                base_url=settings.fhir_base,
            )
            principal = None
            if not (request.method == "GET" and path.strip("/") == "metadata"):
                try:
                    principal = principal_from_header(
                        request.headers.get("Authorization"), session, settings, request.remote_addr, request_id
                    )
                except FhirError as exc:
                    if exc.status == 401:
                        _audit_refused(request.remote_addr, request.headers.get("Authorization") is not None)
                    raise
            resp = dispatch(req, session, settings, principal)
        except RequestEntityTooLarge:
            resp = error_response(FhirError(413, "too-costly", "The request body is too large"))
        except FhirError as exc:
            resp = error_response(exc)
        return _to_flask(resp, request_id)

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        issue = "too-costly" if code == 413 else "not-supported" if code in (405, 415) else "invalid"
        err = FhirError(code, issue, exc.description or exc.name)
        return _to_flask(error_response(err), uuid.uuid4().hex)

    return bp


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

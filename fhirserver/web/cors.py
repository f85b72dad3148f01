"""CORS on /fhir: browser apps on a registered origin may call the API (A6, F7).

- Discovery (``/fhir/metadata``, ``/fhir/.well-known/smart-configuration``) is open to
  every origin: it is public and apps read it before they have registered anything.
- Everything else answers cross-origin reads only to an origin of the allowlist
  (:class:`fhirserver.core.ports.AllowedOrigins`: registered redirect URIs plus
  configuration). Another origin gets no ``Access-Control-Allow-Origin``, so its page
  cannot read the answer (the request itself still needs a bearer token).
- No credentials: the API authenticates by bearer token and ignores cookies, so
  ``Access-Control-Allow-Credentials`` is never sent.
- A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here,
  before the token check: browsers send it without the token, and it is no refused
  request to audit.

The decision is made before the view (``flask.g``) and the headers are added to every
response under /fhir, the OperationOutcomes of errors included, so apps can read why a
request failed.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from fhirserver.core.ports import AllowedOrigins

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Exist, If-None-Match, "
    "If-Modified-Since, X-Request-Id"
)
EXPOSE_HEADERS = "Location, ETag, Content-Location, Last-Modified, WWW-Authenticate, X-Request-Id"
MAX_AGE = "600"  # seconds a browser may reuse a preflight answer
OPEN_PATHS = frozenset({"/fhir/metadata", "/fhir/.well-known/smart-configuration"})
_DECISION = "fhir_cors_allow_origin"


def _under_fhir() -> bool:
    return request.path == "/fhir" or request.path.startswith("/fhir/")


def _allow_origin(origins: AllowedOrigins) -> str | None:
    """The Access-Control-Allow-Origin value for this request, or None."""
    origin = request.headers.get("Origin")
    if not origin:
        return None
    if request.path.rstrip("/") in OPEN_PATHS:
        return "*"
    return origin if origins.is_allowed(origin) else None


def install_cors(bp: Blueprint, origins: AllowedOrigins) -> None:
    """Add CORS to every response under /fhir (app-wide hooks, so routing errors get it too)."""

    @bp.before_app_request
    def _decide() -> Response | None:
        if not _under_fhir():
            return None
        allow = _allow_origin(origins)
        setattr(g, _DECISION, allow)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = Response(status=204)
            if allow:
                preflight.headers["Access-Control-Allow-Methods"] = "GET" if allow == "*" else ALLOW_METHODS
                preflight.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
                preflight.headers["Access-Control-Max-Age"] = MAX_AGE
            return preflight
        return None

    @bp.after_app_request
    def _headers(response: Response) -> Response:
        if not _under_fhir():
            return response
        response.vary.add("Origin")
        allow = getattr(g, _DECISION, None)
        if allow and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response

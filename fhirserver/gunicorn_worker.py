"""gunicorn's own answers and log lines, made to follow the rules of the app behind it.

gunicorn refuses some requests before Flask sees them (a request line or a header over
its limits, a malformed request line, header or chunked body) and answers with an HTML
page that quotes the request. Under /fhir every error must be an OperationOutcome, and
no error may echo the request, so the workers here answer those refusals themselves
(``handle_error``): an OperationOutcome with the right status, fixed diagnostics, and a
plain-text line only when the path is known to lie outside /fhir (when the request line
could not be read, the path is unknown and the answer is an OperationOutcome).

gunicorn's log lines carry request data too (a decoded path, header values): the logger
class escapes control characters in them (``fhirserver.logging_setup``), so that a
``%0d%0a`` in a URL cannot write a line of its own into the access or error log.

``gunicorn_options`` is what ``fhirserver serve`` passes to gunicorn.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from gunicorn import util
from gunicorn.glogging import Logger, SafeAtoms
from gunicorn.http import errors as gerrors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker
from werkzeug.exceptions import BadRequest, ClientDisconnected

from fhirserver.core.errors import FhirError
from fhirserver.logging_setup import escape_controls, install_filters

# gunicorn's maximum request line (its default is 4094): long search URLs reach the app.
LIMIT_REQUEST_LINE = 8190
# One header line (name included). gunicorn's default of 8190 refused a 9,000-character
# bearer token with its own 431; the app's 401 is the better answer, so it gets to see it.
LIMIT_REQUEST_FIELD_SIZE = 16384
LIMIT_REQUEST_FIELDS = 100
FHIR_JSON = "application/fhir+json"
_ANSWERED = "_fhirserver_answered"


def gunicorn_options(*, threads: int) -> dict[str, Any]:
    """The worker class, logger class and request limits of our gunicorn."""
    worker = FhirThreadWorker if threads > 1 else FhirSingleThreadWorker
    return {
        "worker_class": f"{__name__}.{worker.__name__}",
        "logger_class": f"{__name__}.{SafeLogger.__name__}",
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
    }


# ---------------------------------------------------------------- logging


def log_atom(value: str) -> str:
    """One access-log field: WSGI's latin-1 text read back as UTF-8 (so that ``%e2%80%a8``
    shows as ``\\u2028``, bytes that are not UTF-8 as ``\\xNN``), control characters escaped,
    and backslashes and quotes escaped so that a field can neither end a line nor its quotes."""
    value = value.replace("\\", "\\\\")
    with suppress(UnicodeEncodeError):  # not a WSGI string (a value the app put into the environ)
        value = value.encode("latin-1").decode("utf-8", "backslashreplace")
    return escape_controls(value).replace('"', '\\"')


class EscapedAtoms(SafeAtoms):  # type: ignore[misc]
    """gunicorn's access-log atoms (case-insensitive ``{header}i``, ``-`` when missing),
    each string escaped by ``log_atom`` when the format reads it."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self, atoms)  # raw values: SafeAtoms' quote escaping is done in log_atom

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        return log_atom(value) if isinstance(value, str) else value


class SafeLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with escaped access-log fields, and our filters on its two loggers
    (gunicorn logs to them directly; they do not propagate to the root logger's filters)."""

    atoms_wrapper_class = EscapedAtoms

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            install_filters(log)


# ---------------------------------------------------------------- gunicorn's refusals


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str  # a FHIR IssueType
    diagnostics: str  # fixed text: never a word of the request

    @property
    def reason(self) -> str:
        return HTTPStatus(self.status).phrase


def refusal_for(exc: BaseException) -> Refusal:
    """How to answer an error gunicorn raised while reading a request (or a 500)."""
    if isinstance(exc, gerrors.InvalidResponseHeader | gerrors.InvalidResponseHeaderName):
        return Refusal(500, "exception", "The server could not answer the request")  # the app's fault
    if isinstance(exc, gerrors.LimitRequestLine):
        return Refusal(414, "too-costly", f"The request line is longer than {LIMIT_REQUEST_LINE} bytes")
    if isinstance(exc, gerrors.LimitRequestHeaders):
        return Refusal(
            431,
            "too-costly",
            f"The request headers are too large (at most {LIMIT_REQUEST_FIELDS} fields"
            f" of {LIMIT_REQUEST_FIELD_SIZE} bytes each)",
        )
    if isinstance(exc, gerrors.UnsupportedTransferCoding):  # RFC 9112 section 6.1
        return Refusal(501, "not-supported", "The transfer coding of the request is not supported")
    if isinstance(exc, gerrors.ExpectationFailed):
        return Refusal(417, "not-supported", "The only expectation supported is 100-continue")
    if isinstance(exc, gerrors.ForbiddenProxyRequest | ssl.SSLError):
        return Refusal(403, "forbidden", "The connection is not allowed")
    if isinstance(exc, gerrors.ConfigurationProblem):
        return Refusal(500, "exception", "The server could not handle the request")
    if isinstance(exc, gerrors.InvalidChunkSize | gerrors.ChunkMissingTerminator | gerrors.InvalidChunkExtension):
        return Refusal(400, "invalid", "The chunked request body is malformed")
    if isinstance(exc, gerrors.InvalidRequestMethod):
        return Refusal(400, "invalid", "The request method is not a valid HTTP method token")
    if isinstance(exc, gerrors.InvalidHTTPVersion):
        return Refusal(400, "invalid", "The HTTP version of the request is not supported")
    if isinstance(exc, gerrors.InvalidRequestLine):
        return Refusal(400, "invalid", "The request line is malformed")
    if isinstance(exc, gerrors.InvalidHeader | gerrors.InvalidHeaderName | gerrors.ObsoleteFolding):
        return Refusal(400, "invalid", "A request header is malformed")
    if isinstance(exc, gerrors.ParseException):
        return Refusal(400, "invalid", "The request is malformed")
    return Refusal(500, "exception", "The server could not handle the request")


def known_path(req: Any) -> str | None:
    """The decoded path of a request gunicorn parsed, or None when it is not known."""
    path = getattr(req, "path", None)
    return unquote(path) if isinstance(path, str) else None


def under_fhir(path: str | None) -> bool:
    """Unknown paths count as /fhir: a client of the API must always get an OperationOutcome."""
    return path is None or path == "/fhir" or path.startswith("/fhir/")


def error_response(refusal: Refusal, *, fhir: bool, request_id: str) -> tuple[bytes, bytes, str]:
    """The raw HTTP response: head (status line and headers), body, and content type."""
    if fhir:
        outcome = FhirError(refusal.status, refusal.code, refusal.diagnostics).to_operation_outcome()
        body, ctype = json.dumps(outcome, separators=(",", ":")).encode(), f"{FHIR_JSON}; charset=utf-8"
    else:
        body, ctype = f"{refusal.status} {refusal.reason}\n".encode(), "text/plain; charset=utf-8"
    head = (
        f"HTTP/1.1 {refusal.status} {refusal.reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "\r\n"
    )
    return head.encode("latin-1"), body, ctype


class _FhirErrors:
    """``handle_error`` for gunicorn's workers: what ``gunicorn.workers.base.Worker`` does,
    with an OperationOutcome (or plain text outside /fhir) instead of an HTML page, and log
    lines that name the error class, never the request text (which may hold PHI)."""

    log: Any
    cfg: Any
    wsgi: Any

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        self.wsgi = _BodyErrorsAreBadRequests(self.wsgi)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        addr = addr or ("", -1)  # a unix socket
        if getattr(req, _ANSWERED, False):
            # Draining the body after the app's answer failed: the client has its answer, and
            # a second one on the connection would be read as the answer to its next request.
            self.log.debug("closing a connection whose request body is malformed")
            return
        if req is None and isinstance(exc, gerrors.InvalidHeader | gerrors.InvalidHeaderName):
            req = getattr(exc, "req", None)  # set when the head was read and a header was bad
        refusal = refusal_for(exc)
        request_id = uuid.uuid4().hex
        path = known_path(req)
        if isinstance(exc, gerrors.ParseException | ssl.SSLError):
            self.log.warning(
                "refused a request from %s: %s, answered %d (request id %s)",
                addr[0],
                type(exc).__name__,
                refusal.status,
                request_id,
            )
        else:
            self.log.exception(
                "error handling request %s %s (request id %s)", getattr(req, "method", "-"), path, request_id
            )
        head, body, ctype = error_response(refusal, fhir=under_fhir(path), request_id=request_id)
        if path is not None:
            self._access(req, client, addr, refusal, len(body), ctype, request_id)
        try:
            util.write_nonblock(client, head + body)
        except Exception:
            self.log.debug("could not send the error response")

    def _access(
        self, req: Any, client: Any, addr: Any, refusal: Refusal, length: int, ctype: str, request_id: str
    ) -> None:
        """The access-log line of a refused request whose request line was read."""
        environ = default_environ(req, client, self.cfg)
        environ.update(REMOTE_ADDR=addr[0], REMOTE_PORT=str(addr[1]), PATH_INFO=util.unquote_to_wsgi_str(req.path))
        resp = Response(req, client, self.cfg)
        resp.status = f"{refusal.status} {refusal.reason}"
        resp.headers = [("Content-Type", ctype), ("X-Request-Id", request_id)]
        resp.sent = length
        self.log.access(resp, req, environ, timedelta(0))


class FhirThreadWorker(_FhirErrors, ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker (``--threads`` > 1) with FHIR error answers."""

    def handle_request(self, req: Any, conn: Any) -> Any:
        keepalive = super().handle_request(req, conn)
        # The app answered: an error while draining the rest of the body must not answer again.
        setattr(req, _ANSWERED, True)
        return keepalive


class FhirSingleThreadWorker(_FhirErrors, SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker (``--threads 1``) with FHIR error answers.

    Not named ``...SyncWorker``: gunicorn swaps a class of that name for its own gthread
    worker when threads > 1, which would silently drop the error answers.
    """


# ---------------------------------------------------------------- request bodies


class _BodyErrorsAreBadRequests:
    """WSGI middleware: gunicorn raises its own parse errors from ``wsgi.input`` when a
    chunked body is malformed, which the app could only treat as unexpected (a 500);
    they are the client's error, a 400, and Werkzeug's BadRequest says so."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"] = _Input(environ["wsgi.input"])
        return self.app(environ, start_response)


@contextmanager
def _as_bad_request() -> Iterator[None]:
    try:
        yield
    except gerrors.NoMoreData:
        raise ClientDisconnected() from None
    except gerrors.ParseException:
        raise BadRequest("The request body is malformed") from None


class _Input:
    """``wsgi.input`` whose read errors are Werkzeug's client errors."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int | None = None) -> bytes:
        with _as_bad_request():
            data: bytes = self._body.read(size)
            return data

    def readline(self, size: int | None = None) -> bytes:
        with _as_bad_request():
            data: bytes = self._body.readline(size)
            return data

    def readlines(self, hint: int | None = None) -> list[bytes]:
        with _as_bad_request():
            lines: list[bytes] = self._body.readlines(hint)
            return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

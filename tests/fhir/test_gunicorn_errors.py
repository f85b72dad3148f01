"""gunicorn's own refusals under /fhir are OperationOutcomes, never HTML, never a 5xx.

A real ``fhirserver serve`` (gunicorn, as a subprocess) gets raw bytes over a socket, so
that malformed requests really reach gunicorn's parser: a request line or a header over
the limits, a bare CR, an invalid method, an HTTP/0.9 line, odd methods, control bytes in
the path, a broken chunked body. Each answer has the right status and an OperationOutcome
body that quotes nothing of the request (SENTINEL, in every request, is never echoed).
Both worker classes run: gthread (``--threads`` > 1) and sync (``--threads 1``).

The helpers here (``gunicorn_server``, ``send_raw``, ``make_world``) are shared with
test_log_forging.py and test_fuzz_gunicorn.py.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhirserver.gunicorn_worker import LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_LINE
from tests.support import ROOT, free_port, test_env, wait_until

SENTINEL = "Qz7sentinel"
FHIR_JSON = "application/fhir+json"


# -- a real gunicorn ------------------------------------------------------------------------------


@dataclass
class GunicornServer:
    """``fhirserver serve`` in a subprocess; its access log (stdout) and error log (stderr) in files."""

    proc: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    access_log: Path
    error_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[str]:
        return self.access_log.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]

    def error_text(self) -> str:
        return self.error_log.read_text(encoding="utf-8", errors="replace")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


@contextmanager
def gunicorn_server(
    tmp: Path, database_url: str, *, workers: int = 1, threads: int = 4, **extra_env: str
) -> Iterator[GunicornServer]:
    """Start ``fhirserver serve`` on a free port, wait until /fhir/metadata answers; stop it by PID."""
    port = free_port()
    env = test_env(tmp, database_url, port, **extra_env)
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp)), **env}
    access_log, error_log = tmp / "access.log", tmp / "error.log"
    cmd = [sys.executable, "-m", "fhirserver.cli", "serve", "--bind", f"127.0.0.1:{port}"]
    cmd += ["--workers", str(workers), "--threads", str(threads)]
    with access_log.open("wb") as out, error_log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=err, start_new_session=True)
    server = GunicornServer(proc, port, env, access_log, error_log)
    try:
        wait_until(lambda: proc.poll() is not None or _answers(f"{server.url}/fhir/metadata"), 60, "gunicorn to answer")
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{server.error_text()[-4000:]}")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the master stops its workers
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclass
class World:
    """Data of the server's database: a practice (provider, patient, a message) and real tokens."""

    ids: dict[str, str]
    tokens: dict[str, str]


def make_world(server: GunicornServer) -> World:
    """Users and resources made in this process through the project's own functions, with
    the server's settings (the same VAR_DIR, so the same signing key), committed before the
    server sees them. Each token has a grant of its own (as ``fhirserver token`` makes them)."""
    from fhirserver.config import load_settings
    from fhirserver.core.repository import Repository
    from fhirserver.db import make_sessionmaker
    from smart_auth.accounts import create_user, get_user
    from smart_auth.grants import issue_token
    from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, make_practice, message_json
    from tests.support import uid

    settings = load_settings(server.env)
    maker = make_sessionmaker(settings.database_url)
    session = maker()
    try:
        p = make_practice(session, settings)
        msg = Repository(session, settings, p.patient).create(
            "Communication", message_json(p.patient_ref, p.practitioner_ref, topic="Fuzz")
        )
        admin = create_user(session, username=f"adm{uid()}", password=p.password, role="admin", settings=settings)
        auditor = create_user(session, username=f"aud{uid()}", password=p.password, role="auditor", settings=settings)
        provider, patient = get_user(session, p.provider_user_id), get_user(session, p.patient_user_id)

        def token(user: Any, scope: str, patient_id: str | None = None) -> str:
            return issue_token(session, settings, user=user, client_id="tests", scope=scope, patient=patient_id)

        tokens = {
            "provider": token(provider, PROVIDER_SCOPE),
            "patient": token(patient, PATIENT_SCOPE, p.patient_id),
            "admin": token(admin, "user/Practitioner.cruds user/Organization.cruds"),
            "auditor": token(auditor, "user/AuditEvent.rs"),
        }
        session.commit()
        ids = {"Patient": p.patient_id, "Practitioner": p.practitioner_id, "Communication": msg.res_id}
        return World(ids, tokens)
    finally:
        session.close()
        maker.kw["bind"].dispose()


# -- raw HTTP over a socket -----------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    trailing: bytes = b""  # anything the server sent after the response

    def outcome(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class _Received:
    """What the server sent, as the socket ``http.client.HTTPResponse`` parses."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self.data)


def send_raw(port: int, data: bytes, *, timeout: float = 15.0) -> RawResponse:
    """Send ``data`` as is, end the sending side, read all the server sends until it closes,
    and parse the first response; ``trailing`` is whatever came after it (one request must
    get one answer).

    The bytes are sent from a thread while the answer is read, as a browser does: a server
    may answer (413, 431, 401...) and close before it has read a large request, and a client
    that only reads once it has sent everything would see the reset instead of the answer.
    Ending the sending side (a FIN) makes a request that announces more body than it has
    fail at once instead of waiting for bytes that never come, and makes the server close
    the connection once it has answered.
    """

    def sender(sock: socket.socket) -> None:
        with suppress(OSError):  # the server may close before it has read everything
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        thread = threading.Thread(target=sender, args=(sock,), daemon=True)
        thread.start()
        try:
            with suppress(ConnectionResetError):  # a reset after the answer: keep what came
                while chunk := sock.recv(65536):
                    received += chunk
        finally:
            thread.join(timeout)
    method = data.split(b" ", 1)[0].decode("latin-1")  # a HEAD answer has a Content-Length but no body
    resp = http.client.HTTPResponse(_Received(bytes(received)), method=method)  # type: ignore[arg-type]
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    trailing = bytes(received[received.index(b"\r\n\r\n") + 4 + len(body) :])
    return RawResponse(resp.status, headers, body, trailing=trailing)


def assert_outcome(resp: RawResponse, status: int) -> dict[str, Any]:
    """The response is ``status`` with an OperationOutcome body that echoes nothing."""
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.headers["content-type"].startswith(FHIR_JSON), resp.headers
    assert b"<html" not in resp.body.lower()
    outcome = resp.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and all(i["severity"] == "error" and i["diagnostics"] for i in outcome["issue"])
    assert SENTINEL not in resp.body.decode("utf-8") and SENTINEL not in json.dumps(resp.headers)
    return outcome


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    head = f"{method} {target} {version}\r\nHost: 127.0.0.1\r\n" + "".join(h + "\r\n" for h in headers)
    return head.encode("latin-1") + b"\r\n" + body


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[4, 1], ids=["gthread", "sync"])
def server(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    with gunicorn_server(tmp_path_factory.mktemp("gunicorn"), database_url, threads=request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def provider_token(server: GunicornServer) -> str:
    return make_world(server).tokens["provider"]


LONG_LINE = f"/fhir/Patient?name={SENTINEL}{'a' * LIMIT_REQUEST_LINE}"
GUNICORN_REFUSALS = {
    # name: (raw request, status)
    "request line too long": (request("GET", LONG_LINE), 414),
    "header too long": (request("GET", "/fhir/Patient", f"X-Pad: {SENTINEL}{'p' * LIMIT_REQUEST_FIELD_SIZE}"), 431),
    "too many headers": (request("GET", "/fhir/Patient", *(f"X-H{i}: {SENTINEL}" for i in range(120))), 431),
    "bare CR in a header": (request("GET", "/fhir/Patient", f"X-A: {SENTINEL}\rForged: 1"), 400),
    "NUL in a header": (request("GET", "/fhir/Patient", f"X-A: {SENTINEL}\x00"), 400),
    "invalid header name": (request("GET", "/fhir/Patient", f"X A: {SENTINEL}"), 400),
    "obsolete line folding": (request("GET", "/fhir/Patient", f"X-A: {SENTINEL}", " folded"), 400),
    "invalid method token": (request("G(T", f"/fhir/Patient/{SENTINEL}"), 400),
    "lowercase method": (request("get", f"/fhir/Patient/{SENTINEL}"), 400),
    "HTTP/0.9 request line": (f"GET /fhir/metadata?{SENTINEL}\r\n\r\n".encode(), 400),
    "unknown HTTP version": (request("GET", f"/fhir/{SENTINEL}", version="HTTP/7.1"), 400),
    "bare LF line ends": (f"GET /fhir/Patient/{SENTINEL} HTTP/1.1\nHost: x\n\n".encode(), 400),
    "raw space in the target": (request("GET", f"/fhir/Patient/{SENTINEL} x"), 400),
    "raw control byte in the target": (request("GET", f"/fhir/Patient/{SENTINEL}\x1b[31m"), 400),
    "two Content-Lengths": (
        request("POST", "/fhir/Patient", "Content-Length: 2", "Content-Length: 3", body=b"{}"),
        400,
    ),
    "unknown expectation": (request("POST", "/fhir/Patient", f"Expect: {SENTINEL}", "Content-Length: 2"), 417),
}


@pytest.mark.parametrize("name", list(GUNICORN_REFUSALS))
def test_gunicorn_refusals_are_operation_outcomes(server: GunicornServer, name: str) -> None:
    data, status = GUNICORN_REFUSALS[name]
    resp = send_raw(server.port, data)
    assert_outcome(resp, status)
    assert resp.headers["connection"] == "close" and resp.headers["cache-control"] == "no-store"
    assert resp.trailing == b""


def test_the_limits_are_gunicorns_not_ours(server: GunicornServer) -> None:
    """Just under each limit the app answers (401 without a token): the limits above are gunicorn's."""
    target = "/fhir/Patient?x="
    target += "a" * (LIMIT_REQUEST_LINE - len(f"GET {target} HTTP/1.1"))
    assert len(f"GET {target} HTTP/1.1") == LIMIT_REQUEST_LINE
    assert_outcome(send_raw(server.port, request("GET", target)), 401)
    header = "X-Pad: " + "p" * (LIMIT_REQUEST_FIELD_SIZE - len("X-Pad: ") - 2)
    resp = send_raw(server.port, request("GET", "/fhir/Patient", header))
    assert_outcome(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_a_9000_character_token_reaches_the_app(server: GunicornServer) -> None:
    token = SENTINEL + "t" * 9000
    assert len(f"Authorization: Bearer {token}\r\n") > 8190  # gunicorn's default limit refused it with a 431
    resp = send_raw(server.port, request("GET", "/fhir/Patient", f"Authorization: Bearer {token}"))
    assert_outcome(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "CONNECT", "MKCOL"])
def test_odd_methods_on_fhir_paths_are_405(server: GunicornServer, method: str) -> None:
    resp = send_raw(server.port, request(method, f"/fhir/Patient/{SENTINEL}"))
    assert_outcome(resp, 405)
    assert "GET" in resp.headers["allow"]


@pytest.mark.parametrize("path", ["/fhir/Patient/%0d%0aForged:%201", "/fhir/Patient%0a", "/fhir/%00/%ff%fe"])
def test_control_bytes_in_the_path_meet_the_token_check_first(server: GunicornServer, path: str) -> None:
    resp = send_raw(server.port, request("GET", f"{path}{SENTINEL}"))
    assert_outcome(resp, 401)
    assert "forged" not in resp.headers


def test_a_malformed_chunked_body_gets_one_answer(server: GunicornServer) -> None:
    """Without a token the app answers 401 unread; the broken body then closes the connection,
    with no second (gunicorn) response behind the first."""
    data = request(
        "POST", "/fhir/Patient", "Transfer-Encoding: chunked", f"Content-Type: {FHIR_JSON}", body=b"zz\r\n\r\n"
    )
    resp = send_raw(server.port, data)
    assert_outcome(resp, 401)
    assert resp.trailing == b""


def test_a_malformed_chunked_body_read_by_the_app_is_a_400(server: GunicornServer, provider_token: str) -> None:
    """gunicorn raises its parse error from wsgi.input: a 400 OperationOutcome, not a 500."""
    auth = f"Authorization: Bearer {provider_token}"
    ctype = f"Content-Type: {FHIR_JSON}"
    data = request("POST", "/fhir/Patient", auth, "Transfer-Encoding: chunked", ctype, body=b"zz\r\n\r\n")
    resp = send_raw(server.port, data)
    assert_outcome(resp, 400)
    assert resp.trailing == b""
    # The same framing, well formed, gets through to the resource checks ("{}" is no Patient).
    good = request("POST", "/fhir/Patient", auth, "Transfer-Encoding: chunked", ctype, body=b"2\r\n{}\r\n0\r\n\r\n")
    assert "resourceType" in assert_outcome(send_raw(server.port, good), 400)["issue"][0]["diagnostics"]


def test_outside_fhir_a_refusal_is_plain_text(server: GunicornServer) -> None:
    """When the path is known and outside /fhir, no OperationOutcome (and still no HTML)."""
    resp = send_raw(server.port, request("POST", "/portal/", "Content-Length: 2", "Content-Length: 3", body=b"{}"))
    assert resp.status == 400 and resp.headers["content-type"].startswith("text/plain")
    assert resp.body == b"400 Bad Request\n"


def test_the_server_logged_no_traceback(server: GunicornServer) -> None:
    """Runs after the others of its module: every refusal above was expected, none was a crash."""
    log = server.error_text()
    assert "refused a request" in log  # the refusals were logged, by class name
    assert "Traceback" not in log and "[ERROR]" not in log and "unexpected " not in log
    assert SENTINEL not in log  # refusals never quote the request

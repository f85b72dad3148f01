"""Request data cannot forge log lines: control characters are escaped in every logged field.

A ``%0d%0a`` in a URL path is decoded by gunicorn and logged (``%(U)s``); without escaping
it wrote a line of the client's choosing into the access log, no token needed. Unit tests
cover the filter (messages, arguments, tracebacks, query-string stripping) and gunicorn's
logger class; a real gunicorn then gets paths and header values with CR/LF, ESC, NUL, TAB,
NEL and U+2028, and writes exactly one access-log line per request, escapes visible.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from fhirserver.cli import ACCESS_LOG_FORMAT
from fhirserver.gunicorn_worker import EscapedAtoms, SafeLogger, log_atom
from fhirserver.logging_setup import (
    EscapeControlCharacters,
    StripQueryStrings,
    configure_logging,
    escape_controls,
    format_exception,
    install_filters,
)
from tests.fhir.test_gunicorn_errors import GunicornServer, gunicorn_server, request, send_raw
from tests.support import uid, wait_until

# Every character that ends a line for str.splitlines(), a log viewer or a terminal, and more.
CONTROLS = "\r\n\t\x1b\x00\x07\x0b\x0c\x1c\x1d\x1e\x7f\x80\x85\x9f\u2028\u2029"


def one_line(text: str) -> bool:
    return len(text.splitlines()) == 1 and "\x1b" not in text and "\x00" not in text


# -- the filter ------------------------------------------------------------------------------------


def test_every_control_character_is_escaped_visibly() -> None:
    escaped = escape_controls("a" + CONTROLS + "z")
    assert escaped == ("a\\x0d\\x0a\\x09\\x1b\\x00\\x07\\x0b\\x0c\\x1c\\x1d\\x1e\\x7f\\x80\\x85\\x9f\\u2028\\u2029z")
    assert one_line(escaped)
    # Text that is not a control stays as it is: accents, CJK, emoji, quotes, backslashes.
    plain = 'Zoë 山田 \U0001f600 "quoted" back\\slash ~'
    assert escape_controls(plain) == plain


def make_record(msg: str, *args: object, name: str = "fhirserver.test", exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args or None, exc_info)  # type: ignore[arg-type]


def test_the_message_and_its_arguments_stay_one_line() -> None:
    record = make_record("unknown id %s from %r", "x\r\n2026-01-01 INFO forged", b"\x1b[31m")
    assert EscapeControlCharacters().filter(record)
    msg = record.getMessage()
    assert one_line(msg)
    assert msg == "unknown id x\\x0d\\x0a2026-01-01 INFO forged from b'\\x1b[31m'"
    # A message without controls is left alone (lazy %-formatting intact).
    clean = make_record("read %s/%s", "Patient", "p1")
    EscapeControlCharacters().filter(clean)
    assert clean.msg == "read %s/%s" and clean.args == ("Patient", "p1")


def test_a_non_string_message_is_escaped_too() -> None:
    record = make_record(ValueError("id\u2028forged"))  # type: ignore[arg-type]
    EscapeControlCharacters().filter(record)
    assert record.getMessage() == "id\\u2028forged"


def _raise_chained(value: str) -> None:
    try:
        raise KeyError(f"inner {value}")
    except KeyError as exc:
        raise ValueError(f"outer {value}") from exc


def test_tracebacks_keep_their_lines_but_messages_are_escaped() -> None:
    try:
        _raise_chained("id\r\nFORGED line\u2028FORGED2")
    except ValueError as exc:
        exc_info = (type(exc), exc, exc.__traceback__)
    record = make_record("failed", exc_info=exc_info)
    EscapeControlCharacters().filter(record)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.emit(record)
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith('  File "') and "_raise_chained" in line for line in lines)
    assert "The above exception was the direct cause of the following exception:" in lines
    assert "ValueError: outer id\\x0d\\x0aFORGED line\\u2028FORGED2" in lines
    assert not [line for line in lines if line.startswith("FORGED")]
    assert format_exception(exc_info) in out.getvalue()


def test_exception_groups_keep_the_standard_layout() -> None:
    try:
        raise ExceptionGroup("group\nFORGED", [ValueError("a\r\nFORGED"), TypeError("b")])
    except ExceptionGroup as exc:
        text = format_exception((type(exc), exc, exc.__traceback__))
    assert "ExceptionGroup: group\\x0aFORGED (2 sub-exceptions)" in text
    assert "ValueError: a\\x0d\\x0aFORGED" in text and "+---------------- 2 ----------------" in text
    assert not [line for line in text.splitlines() if line.lstrip(" |").startswith("FORGED")]


def test_query_strings_are_still_stripped_and_escaped() -> None:
    """A CR/LF before the ``?`` must not hide the query string from StripQueryStrings."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    install_filters(handler)
    record = make_record('127.0.0.1 - - "GET %s HTTP/1.1" 200 -', "/fhir/Patient/\r\nx?name=Smith\r\nFORGED")
    handler.handle(record)
    assert out.getvalue() == '127.0.0.1 - - "GET /fhir/Patient/\\x0d\\x0ax?[redacted] HTTP/1.1" 200 -\n'
    plain = make_record('"GET /fhir/Patient?name=Smith&birthdate=1980 HTTP/1.1" 200 -')
    handler.handle(plain)
    assert out.getvalue().endswith('"GET /fhir/Patient?[redacted] HTTP/1.1" 200 -\n')


@pytest.fixture()
def root_capture() -> Iterator[io.StringIO]:
    """A real handler on the root logger, as gunicorn's workers have one (basicConfig)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def test_configure_logging_guards_our_werkzeugs_and_gunicorns_loggers(root_capture: io.StringIO) -> None:
    configure_logging()
    configure_logging()  # a second app in the same process adds nothing
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error"):
        kinds = [type(f) for f in logging.getLogger(name).filters]
        assert kinds.count(EscapeControlCharacters) == 1 and kinds.count(StripQueryStrings) == 1, name
    logging.getLogger(f"fhirserver.test.{uid()}").warning("bad id %s", "p1\r\nFORGED\u2028x")
    assert root_capture.getvalue() == "bad id p1\\x0d\\x0aFORGED\\u2028x\n"


# -- gunicorn's logger class -------------------------------------------------------------------------


def test_access_log_fields_are_escaped() -> None:
    assert log_atom("/fhir/Patient/\r\n") == "/fhir/Patient/\\x0d\\x0a"
    # WSGI strings are latin-1: the UTF-8 they carry is shown as text, other bytes as \xNN.
    assert log_atom("/fhir/Zo\xc3\xab/\xe2\x80\xa8/\xc2\x85/\xff") == "/fhir/Zoë/\\u2028/\\x85/\\xff"
    # Quotes and backslashes cannot end a quoted field or fake an escape.
    assert log_atom('a"b\\x0a') == 'a\\"b\\\\x0a'
    atoms = EscapedAtoms({"U": "/x\n", "{user-agent}i": "ua\t1", "s": 200})
    fmt = "%(U)s %({User-Agent}i)s %(s)s %(missing)s"  # gunicorn's %-style access-log format
    assert fmt % atoms == "/x\\x0a ua\\x091 200 -"


def test_safe_logger_writes_one_line_per_record(tmp_path: Path) -> None:
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("errorlog", str(tmp_path / "error.log"))
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    log = SafeLogger(cfg)
    try:
        log.error("Error handling request %s", "/fhir/\r\nFORGED")
        resp = SimpleNamespace(status="200 OK", headers=[("X-Request-Id", "r1")], sent=2)
        req = SimpleNamespace(headers=[("USER-AGENT", "ua\r\nFORGED")])
        environ = {
            "REMOTE_ADDR": "127.0.0.1",
            "REQUEST_METHOD": "GET",
            "PATH_INFO": '/fhir/Zo\xc3\xab/\r\nFORGED"',  # WSGI latin-1: UTF-8 bytes of "Zoë"
            "RAW_URI": "/",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_USER_AGENT": "ua\r\nFORGED",
        }
        log.access(resp, req, environ, timedelta(milliseconds=3))
    finally:
        for logger in (log.error_log, log.access_log):
            for handler in list(logger.handlers):
                handler.close()
                logger.removeHandler(handler)
    errors = (tmp_path / "error.log").read_text().splitlines()
    assert len(errors) == 1 and errors[0].endswith("Error handling request /fhir/\\x0d\\x0aFORGED")
    access = (tmp_path / "access.log").read_text(encoding="utf-8").splitlines()
    assert access == ['127.0.0.1 "GET /fhir/Zoë/\\x0d\\x0aFORGED\\"" 200 2 3ms "ua\\x0d\\x0aFORGED" r1']


# -- a real gunicorn -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with gunicorn_server(tmp_path_factory.mktemp("gunicorn-logs"), database_url, threads=2) as srv:
        yield srv


# (path with a marker, what the access log shows for it)
PATHS = [
    ("/fhir/Patient/{m}%0d%0aFORGED%20200", "/fhir/Patient/{m}\\x0d\\x0aFORGED 200"),
    ("/fhir/Patient/{m}%0aFORGED", "/fhir/Patient/{m}\\x0aFORGED"),
    ("/fhir/Patient/{m}%1b[31mred%1b[0m", "/fhir/Patient/{m}\\x1b[31mred\\x1b[0m"),
    ("/fhir/Patient/{m}%e2%80%a8FORGED", "/fhir/Patient/{m}\\u2028FORGED"),
    ("/fhir/Patient/{m}%c2%85FORGED%e2%80%a9", "/fhir/Patient/{m}\\x85FORGED\\u2029"),
    ("/fhir/Patient/{m}%00%09%7f%0b%0c", "/fhir/Patient/{m}\\x00\\x09\\x7f\\x0b\\x0c"),
    ("/fhir/{m}%22%20%5cx0a", '/fhir/{m}\\" \\\\x0a'),  # a quote and a backslash cannot break the field
]
# (User-Agent bytes, what the access log shows): gunicorn itself refuses CR, LF, NUL and ESC in
# header values, so these are the controls a header can still carry: TAB and non-ASCII bytes.
USER_AGENTS = [
    (b"ua{m}\tFORGED", "ua{m}\\x09FORGED"),
    (b"ua{m}\xe2\x80\xa8FORGED", "ua{m}\\u2028FORGED"),
    (b"ua{m}\xc2\x85FORGED\x85", "ua{m}\\x85FORGED\\x85"),
    (b"ua{m} %0d%0aFORGED", "ua{m} %0d%0aFORGED"),  # not decoded in a header: harmless text
]


def _raw_get(port: int, path: str, user_agent: bytes = b"test") -> int:
    data = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"User-Agent: " + user_agent + b"\r\n\r\n"
    return send_raw(port, data).status


def test_each_request_is_one_access_log_line_with_visible_escapes(server: GunicornServer) -> None:
    sent: list[tuple[str, str, str]] = []  # (marker, expected path, expected user agent)
    for path, shown in PATHS:
        m = f"M{uid()}"
        assert _raw_get(server.port, path.format(m=m)) == 401  # the token check comes first
        sent.append((m, shown.format(m=m), "test"))
    for raw_agent, shown in USER_AGENTS:
        m = f"M{uid()}"
        assert _raw_get(server.port, f"/fhir/Patient/{m}", raw_agent.replace(b"{m}", m.encode())) == 401
        sent.append((m, f"/fhir/Patient/{m}", shown.format(m=m)))

    last = sent[-1][0]
    lines = wait_until(lambda: (ls := server.access_lines()) and last in ls[-1] and ls, 10, "the access log")
    for marker, path, agent in sent:  # each request: one line, its path and user agent escaped
        mine = [line for line in lines if marker in line]
        assert len(mine) == 1, (marker, mine)
        assert f'"GET {path}" 401 ' in mine[0] and f'"{agent}"' in mine[0], mine[0]
    assert not [line for line in lines if not line.startswith("127.0.0.1 ")]  # no forged line at all
    assert not any("\x1b" in line or "\x00" in line or "\t" in line for line in lines)
    text = server.access_log.read_text(encoding="utf-8")
    assert "\r" not in text and "\u2028" not in text and "\x85" not in text and "\u2029" not in text


def test_a_refused_request_leaves_no_request_bytes_in_the_error_log(server: GunicornServer) -> None:
    m = f"M{uid()}"
    resp = send_raw(server.port, request("GET", f"/fhir/Patient/{m}", f"X-{m}: a\rFORGED"))
    assert resp.status == 400
    wait_until(lambda: "refused a request" in server.error_text(), 10, "the error log")
    errors = server.error_text()
    assert m.lower() not in errors.lower() and "FORGED" not in errors  # gunicorn upper-cases header names
    assert all(line.startswith(("[", "20")) for line in errors.splitlines()), errors  # only whole records


def test_a_request_line_gunicorn_cannot_read_forges_nothing(server: GunicornServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /fhir/\x1b[31mFORGED\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    errors = server.error_text()
    assert "FORGED" not in errors and "\x1b" not in errors
    assert not [line for line in server.access_lines() if "FORGED\x1b" in line or "\x1b" in line]

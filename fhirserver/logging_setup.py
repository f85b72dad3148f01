"""Logging that never carries PHI, secrets or query strings, and that cannot be forged.

Werkzeug's and gunicorn's access logs print the request line, query string included;
query strings may hold PHI (``Patient?name=...``), so the access log records the path
only. Our own log lines name resource types and ids, never contents.

Log lines also carry request data (a decoded path, a header value, an id from a URL),
and a client controls those bytes: a ``%0d%0a`` in a path would otherwise start a line
of the client's choosing in the log, and an ESC sequence would repaint a terminal.
``EscapeControlCharacters`` writes every control character and Unicode line separator
as a visible ``\\x0d`` / ``\\u2028``, so one record is always one line (an exception's
traceback keeps its own line structure; only its messages, which may quote request
data, are escaped). Escaping runs before StripQueryStrings, which a CR or LF in a path
would otherwise get past. gunicorn's loggers get the same filters, and its access-log
fields an escaping of their own, from ``fhirserver.gunicorn_worker.SafeLogger``.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Generator
from types import TracebackType

_QS = re.compile(r'(\s/[^\s?"]*)\?[^\s"]*')
# C0 controls (CR, LF, TAB, ESC, NUL...), DEL, C1 controls (NEL U+0085 among them) and the
# Unicode line and paragraph separators: everything str.splitlines() or a terminal acts on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with each control character or line separator written as ``\\xNN``/``\\uNNNN``."""
    return _CONTROL.sub(_escaped, text)


def has_controls(text: str) -> bool:
    return _CONTROL.search(text) is not None


class _OneLineMessages(traceback.TracebackException):
    """Formats exactly like its base class, except that each exception message and note is
    escaped to one line: messages may quote request data (an id, a header), frames do not."""

    def format_exception_only(self) -> Generator[str, None, None]:
        for chunk in super().format_exception_only():
            yield escape_controls(chunk.removesuffix("\n")) + "\n"


def format_exception(exc_info: ExcInfo) -> str:
    """The traceback ``logging`` would print, with every exception message on one line.

    The standard library builds the nested TracebackExceptions of causes, contexts and
    exception groups itself; each node is switched to ``_OneLineMessages`` so that chains
    and groups keep the standard layout.
    """
    root = traceback.TracebackException(*exc_info)  # type: ignore[arg-type]
    pending, seen = [root], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        node.__class__ = _OneLineMessages
        pending += [n for n in (node.__cause__, node.__context__) if n is not None]
        pending += getattr(node, "exceptions", None) or []
    return "".join(root.format()).removesuffix("\n")


class StripQueryStrings(logging.Filter):
    """Remove query strings from any log line that carries a request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        if "?" in msg:
            record.msg = _QS.sub(r"\1?[redacted]", msg)
            record.args = ()
        return True


class EscapeControlCharacters(logging.Filter):
    """Escape control characters in a record's message (its args included) and exception.

    The message is formatted here, once, and replaces ``msg``/``args``: an argument's
    ``str()`` is where request data comes in, and escaping the result covers every type.
    Running twice changes nothing (the escaped text holds no control characters).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True  # the handler reports the broken record itself
        if has_controls(msg):
            record.msg = escape_controls(msg)
            record.args = ()
        if record.exc_info and record.exc_info[1] is not None:
            # Set even when a formatter cached the raw text: formatters print exc_text as is.
            record.exc_text = format_exception(record.exc_info)
        return True


def install_filters(filterer: logging.Filterer) -> None:
    """Add the control-character and query-string filters to a logger or handler, once each.

    Escaping comes first: a CR, LF or TAB in a path is whitespace, which would end the path
    before its ``?`` for StripQueryStrings and let the query string through.
    """
    for kind in (EscapeControlCharacters, StripQueryStrings):
        if not any(isinstance(f, kind) for f in filterer.filters):
            filterer.addFilter(kind())


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        install_filters(handler)
    # Loggers that do not propagate to the root, or that have handlers of their own.
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error"):
        install_filters(logging.getLogger(name))
    # Authlib's DEBUG lines print issued tokens and client secrets: never let them through,
    # whatever level an operator turns on for the rest.
    logging.getLogger("authlib").setLevel(max(logging.INFO, level))

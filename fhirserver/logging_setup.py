"""Logging that never carries PHI, secrets or query strings.

Werkzeug's and gunicorn's access logs print the request line, query string included;
query strings may hold PHI (``Patient?name=...``), so the access log records the path
only. Our own log lines name resource types and ids, never contents.
"""

from __future__ import annotations

import logging
import re

_QS = re.compile(r'(\s/[^\s?"]*)\?[^\s"]*')


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


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(f, StripQueryStrings) for h in root.handlers for f in h.filters):
        if not root.handlers:
            logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for handler in root.handlers:
            handler.addFilter(StripQueryStrings())
    for name in ("werkzeug", "gunicorn.access"):
        logging.getLogger(name).addFilter(StripQueryStrings())
    # Authlib's DEBUG lines print issued tokens and client secrets: never let them through,
    # whatever level an operator turns on for the rest.
    logging.getLogger("authlib").setLevel(max(logging.INFO, level))

"""Which browser origins CORS allows: the ``AllowedOrigins`` port of the FHIR server.

A browser app runs on the origin of its redirect URI, so the allowlist is the origins
of every registered client's redirect URIs plus ``Settings.cors_origins`` (configured
extras, e.g. an app that signs in through a different page). The ``/fhir`` API allows
the whole list; the token and revocation endpoints allow only the calling client's own
origins (:func:`client_allows`), as SMART 2.2 requires for public clients (A6).

The list is read from ``oauth_client`` at most every ``REFRESH_SECONDS`` per process
and cached whole, so that a preflight costs no query, a client that ``fhirserver client
add`` registers while the server runs is allowed a few seconds later, and the cache is
bounded by the registrations: origins that browsers send are never stored.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth import clients
from smart_auth.models import OAuthClient

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5.0
MAX_ORIGIN_CHARS = 255
# scheme://host[:port], as browsers serialize an Origin header (RFC 6454 §6.2).
ORIGIN_RE = re.compile(r"https?://[a-z0-9.\-]+(?::[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](?::[0-9]{1,5})?")
DEFAULT_PORTS = {"http": "80", "https": "443"}


def canonical(origin: str | None) -> str | None:
    """``origin`` as a browser would send it (lower case, no default port, no slash), or None
    when it is no http(s) origin at all (``null``, a path, spaces, control characters)."""
    if not origin or len(origin) > MAX_ORIGIN_CHARS:
        return None
    value = origin.strip().rstrip("/").lower()
    if not ORIGIN_RE.fullmatch(value):
        return None
    scheme, _, rest = value.partition("://")
    if rest.endswith(":" + DEFAULT_PORTS[scheme]):
        rest = rest.rsplit(":", 1)[0]
    return f"{scheme}://{rest}"


def origin_of_uri(uri: str) -> str | None:
    """The canonical origin of a redirect URI."""
    return canonical(clients.origin_of(uri))


def configured(settings: Settings) -> frozenset[str]:
    return frozenset(o for o in (canonical(v) for v in settings.cors_origins) if o)


def load(session: Session, settings: Settings) -> frozenset[str]:
    """Every origin of the allowlist, read now."""
    registered = (origin_of_uri(u) for u in clients.registered_origins(session))
    return configured(settings) | {o for o in registered if o}


def client_allows(client: OAuthClient | None, origin: str | None, settings: Settings) -> bool:
    """May a page on ``origin`` call the token or revocation endpoint as ``client``?"""
    wanted = canonical(origin)
    if client is None or wanted is None:
        return False
    return wanted in configured(settings) or any(origin_of_uri(u) == wanted for u in clients.redirect_uris(client))


class RegisteredOrigins:
    """The allowlist of one process, cached whole and reloaded every ``refresh_seconds``.

    Reads use their own short session on ``engine``, never the request's: the check runs
    before the request opens its transaction. When the database cannot be read, the last
    list stays in use (or only the configured origins, before the first read).
    """

    def __init__(self, settings: Settings, engine: Engine, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._settings = settings
        self._engine = engine
        self._refresh_seconds = refresh_seconds
        self._origins: frozenset[str] = configured(settings)
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def _current(self) -> frozenset[str]:
        now = time.time()  # wall clock, so that tests move it with time-machine
        loaded = self._loaded_at
        if loaded is not None and loaded <= now < loaded + self._refresh_seconds:
            return self._origins
        with self._lock:
            if self._loaded_at == loaded:  # no other thread reloaded meanwhile
                try:
                    with Session(self._engine) as session:
                        self._origins = load(session, self._settings)
                except SQLAlchemyError as exc:
                    log.warning("could not read the CORS origins (%s); keeping the last list", type(exc).__name__)
                self._loaded_at = now
        return self._origins

    def is_allowed(self, origin: str) -> bool:
        wanted = canonical(origin)
        return wanted is not None and wanted in self._current()

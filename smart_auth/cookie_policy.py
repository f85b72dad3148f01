"""The names and attributes of the login server's cookies (ASVS 3.3.x, checklist F5).

In production every cookie is ``__Host-`` prefixed, Secure, HttpOnly, on ``Path=/`` and
without a Domain: the browser then refuses a cookie set over http, for another path, or
by a sibling subdomain, so nobody can plant or shadow one. ``__Host-`` forces ``Path=/``,
so the login server's cookies and the portal's have names of their own
(``fhir_auth_*`` here, ``webmail_portal_session`` in ``portal_app.sessions``), and the
FHIR API reads no cookie at all. Development on http://127.0.0.1 (``make run``) drops
exactly the prefix and the Secure flag, which a browser would refuse over http
(``fhirserver.security_headers.strict_transport`` decides, as it does for HSTS).

SameSite is Lax for the session and pre-login cookies: an app sends the user to
/auth/authorize by a cross-site top-level navigation, which must still carry them
(Strict would lose the sign-in and the pending request). The device cookie is read only
by the login form's own POST: Strict.
"""

from __future__ import annotations

from typing import Any

from fhirserver.config import Settings
from fhirserver.security_headers import strict_transport

HOST_PREFIX = "__Host-"


def name(base: str, settings: Settings) -> str:
    """The cookie's name in this mode: ``__Host-`` + ``base`` in production, ``base`` in development."""
    return HOST_PREFIX + base if strict_transport(settings) else base


def attributes(settings: Settings, *, samesite: str = "Lax") -> dict[str, Any]:
    """Keyword arguments of ``set_cookie``/``delete_cookie`` (no Domain: host-only)."""
    return {"path": "/", "httponly": True, "secure": strict_transport(settings), "samesite": samesite}

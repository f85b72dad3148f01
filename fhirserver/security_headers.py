"""HSTS on every response of the origin: /auth, /fhir and /portal alike.

A tiny WSGI middleware rather than a Flask hook, because the portal is a separate Flask
app mounted beside the API (``fhirserver.wsgi``): wrapped around both, one header policy
covers every path, error pages and gunicorn-facing 404s included. In production (and
whenever the public base URL is https) browsers are told to use https only, for a year,
on subdomains too. Development on http://127.0.0.1 sends none: HSTS on a loopback name
would outlive the demo in the browser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fhirserver.config import Settings

HSTS = "max-age=31536000; includeSubDomains"
_NAME = "strict-transport-security"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def strict_transport(settings: Settings) -> bool:
    """Secure, ``__Host-`` cookies and HSTS: outside development, or on an https base URL."""
    return not settings.dev_mode or settings.base_url.lower().startswith("https://")


class StrictTransportSecurity:
    """Adds HSTS to every response that lacks it (wrapping twice is harmless)."""

    def __init__(self, app: WSGIApp, value: str = HSTS) -> None:
        self.app = app
        self.value = value

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == _NAME for name, _ in headers):
                headers.append(("Strict-Transport-Security", self.value))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def install(app: WSGIApp, settings: Settings) -> WSGIApp:
    """``app`` wrapped with HSTS when ``settings`` call for it, else ``app`` itself."""
    return StrictTransportSecurity(app) if strict_transport(settings) else app

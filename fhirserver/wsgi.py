"""The all-in-one WSGI application: API server at /, portal and console under /portal.

Deployment glue only: the portal is a separate Flask app that reaches the API over
HTTP like any SMART app, mounted here so that one gunicorn serves everything on one
origin. ``gunicorn fhirserver.wsgi:application`` serves it.
"""

from __future__ import annotations

from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from fhirserver import security_headers
from fhirserver.app import create_app
from fhirserver.config import Settings, load_settings
from fhirserver.core.ports import TokenAuthority


def create_wsgi(settings: Settings | None = None, *, tokens: TokenAuthority | None = None) -> Any:
    """API and portal in one WSGI app; ``tokens`` as for ``create_app`` (the benchmark's baseline)."""
    from portal_app.app import create_portal_app
    from portal_app.config import PortalConfig

    settings = settings or load_settings()
    core = create_app(settings, tokens=tokens)
    portal = create_portal_app(
        PortalConfig(
            base_url=settings.base_url,
            secret_key=settings.secret_key,
            patient_client_secret=settings.portal_client_secret,
            console_client_secret=settings.console_client_secret,
            session_url=settings.portal_session_url,
            session_encryption_key=settings.portal_session_key or None,
            session_idle_minutes=settings.session_idle_minutes,
            session_absolute_hours=settings.session_absolute_hours,
            dev_mode=settings.dev_mode,
        )
    )
    # One HSTS policy for every path, the portal's included (fhirserver.security_headers).
    return security_headers.install(DispatcherMiddleware(core, {"/portal": portal}), settings)


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing this module has no side effects.
    if name == "application":
        app = create_wsgi()
        globals()["application"] = app
        return app
    raise AttributeError(name)

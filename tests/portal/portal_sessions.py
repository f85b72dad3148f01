"""Reading the portal's session store from a test, as the live portal would read it.

The live server's portal keeps the tokens in its server-side session, sealed; a test that
must show that logout revoked them opens that store with a portal app built from the same
settings (what ``fhirserver.wsgi`` builds), never by reaching into the live app.
"""

from __future__ import annotations

from typing import Any

from portal_app.app import create_portal_app
from portal_app.config import PortalConfig
from portal_app.sessions import COOKIE_NAME


def portal_store(settings: Any, session_url: str | None = None) -> Any:
    """The session interface of a portal app with the live server's settings (its store and key)."""
    config = PortalConfig(
        base_url=settings.base_url,
        secret_key=settings.secret_key,
        patient_client_secret=settings.portal_client_secret,
        console_client_secret=settings.console_client_secret,
        session_url=session_url or settings.portal_session_url,
        session_idle_minutes=settings.session_idle_minutes,
        dev_mode=settings.dev_mode,
    )
    return create_portal_app(config).session_interface


def realm_tokens(store: Any, sid: str, realm: str) -> dict[str, Any]:
    """The tokens the portal holds for ``realm`` in session ``sid`` (the test fails if there are none)."""
    data = store.load(sid)
    assert data, "the portal must hold a session for this cookie"
    tokens = (data.get("realms") or {}).get(realm)
    assert tokens and tokens.get("access_token") and tokens.get("refresh_token") and tokens.get("id_token")
    return dict(tokens)


def cookie_of(jar: Any) -> str:
    """The portal session id in a requests cookie jar."""
    value = jar.get(COOKIE_NAME, path="/")
    assert value, "the browser must hold a portal session cookie"
    return str(value)

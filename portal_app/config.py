"""Portal configuration: what the portal needs to act as a SMART client of our own API.

The portal is a third-party-style app: it knows only URLs and its own client secrets,
never the database or the server's keys, so its configuration is deliberately small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class PortalConfig:
    base_url: str
    secret_key: str
    patient_client_secret: str
    console_client_secret: str
    session_url: str
    session_idle_minutes: int = 15
    dev_mode: bool = False
    patient_client_id: str = "portal"
    console_client_id: str = "console"
    # Where the portal's server-side HTTP calls go when the public base URL is not
    # reachable from inside the deployment (e.g. behind a proxy); defaults to base_url.
    internal_base_url: str | None = None

    @property
    def public_base(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def api_base(self) -> str:
        """The origin used for back-channel calls (token exchange, FHIR API)."""
        return (self.internal_base_url or self.base_url).rstrip("/")

    @property
    def fhir_aud(self) -> str:
        return self.public_base + "/fhir"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PortalConfig:
        """Build the config from the same variables the API server reads."""
        env = dict(os.environ if env is None else env)
        base_url = env.get("BASE_URL", "http://127.0.0.1:8080").rstrip("/")
        dev = env.get("FHIRSERVER_ENV", "development") == "development"
        missing = [v for v in ("SECRET_KEY", "PORTAL_CLIENT_SECRET", "CONSOLE_CLIENT_SECRET") if not env.get(v)]
        if missing:
            raise ValueError("missing portal settings: " + ", ".join(missing))
        return cls(
            base_url=base_url,
            secret_key=env["SECRET_KEY"],
            patient_client_secret=env["PORTAL_CLIENT_SECRET"],
            console_client_secret=env["CONSOLE_CLIENT_SECRET"],
            session_url=env.get("PORTAL_SESSION_URL", "filesystem://var/portal-sessions"),
            session_idle_minutes=int(env.get("SESSION_IDLE_MINUTES", "15")),
            dev_mode=dev,
            patient_client_id=env.get("PORTAL_CLIENT_ID", "portal"),
            console_client_id=env.get("CONSOLE_CLIENT_ID", "console"),
            internal_base_url=env.get("PORTAL_INTERNAL_BASE_URL") or None,
        )

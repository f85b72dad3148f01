"""Portal configuration: what the portal needs to act as a SMART client of our own API.

The portal is a third-party-style app: it knows only URLs and its own client secrets,
never the database or the server's keys, so its configuration is deliberately small.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# HKDF "info": the purpose of the derived key, so that it is never the key of anything else.
SESSION_KEY_PURPOSE = b"fhir-webmail portal session store AES-256-GCM v1"


@dataclass(frozen=True)
class PortalConfig:
    base_url: str
    secret_key: str
    patient_client_secret: str
    console_client_secret: str
    session_url: str
    session_idle_minutes: int = 15
    # However active, a sign-in ends this long after it began (beside the idle timeout).
    session_absolute_hours: int = 12
    dev_mode: bool = False
    patient_client_id: str = "portal"
    console_client_id: str = "console"
    # Where the portal's server-side HTTP calls go when the public base URL is not
    # reachable from inside the deployment (e.g. behind a proxy); defaults to base_url.
    internal_base_url: str | None = None
    # The AES-256-GCM key of the session store: 32 raw bytes or their base64. Without it the
    # key is derived from secret_key (HKDF-SHA256), so a new secret_key also ends every session.
    session_encryption_key: bytes | str | None = None

    def session_key(self) -> bytes:
        """The 32-byte key that seals stored sessions (ValueError, naming no value, if it is bad)."""
        if self.session_encryption_key is None:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SESSION_KEY_PURPOSE).derive(
                self.secret_key.encode("utf-8")
            )
        if isinstance(self.session_encryption_key, bytes) and len(self.session_encryption_key) == 32:
            return self.session_encryption_key
        try:
            key = base64.b64decode(self.session_encryption_key, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ValueError("session_encryption_key must be 32 bytes, raw or base64")
        return key

    @property
    def strict_transport(self) -> bool:
        """``__Host-``, Secure cookies: outside development, or on an https base URL (as the API)."""
        return not self.dev_mode or self.base_url.lower().startswith("https://")

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
            session_absolute_hours=int(env.get("SESSION_ABSOLUTE_HOURS", "12")),
            dev_mode=dev,
            patient_client_id=env.get("PORTAL_CLIENT_ID", "portal"),
            console_client_id=env.get("CONSOLE_CLIENT_ID", "console"),
            internal_base_url=env.get("PORTAL_INTERNAL_BASE_URL") or None,
            session_encryption_key=env.get("PORTAL_SESSION_ENCRYPTION_KEY") or None,
        )

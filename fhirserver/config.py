"""Settings: one typed object, read from the environment and validated with marshmallow.

Every process (web, worker, CLI, tests) builds its settings here, so that the
same variable means the same thing everywhere. Development defaults keep all
state under ``var/`` so that ``make run`` works on a bare machine; production
sets ``DATABASE_URL``, ``BROKER_URL``, ``SMTP_URL`` and the key variables.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, validate, validates_schema
from marshmallow import fields as mf

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTIFY_BODY = (
    "Hello,\n\nYou have a new secure message waiting in the patient portal of [OFFICE].\n"
    "For your privacy the message is not included in this email. Please log in to read it:\n\n"
    "[URL]\n\nIf you do not want these notices, reply to this email or call the office.\n"
)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


@dataclass(frozen=True)
class SigningKeyConfig:
    """One token-signing key as configured (``smart_auth.signing_keys`` makes the key ring).

    ``kid`` empty: the key id is the key's RFC 7638 thumbprint. ``active_from`` (Unix time,
    0 for "always") is when the key starts to sign; it is published in the JWKS before that.
    """

    kid: str
    pem: str = field(repr=False)
    active_from: float = 0.0


@dataclass(frozen=True)
class Settings:
    database_url: str
    base_url: str = "http://127.0.0.1:8080"
    broker_url: str = "filesystem://"
    broker_folder: str = ""
    smtp_url: str = "smtp://127.0.0.1:8025"
    mail_from: str = "notify@practice.example"
    office_name: str = "Our practice"
    notify_subject: str = "You have a new secure message"
    notify_body: str = DEFAULT_NOTIFY_BODY
    secret_key: str = ""
    # "kid:base64key,kid2:base64key"; the active key encrypts, every listed key decrypts.
    encryption_keys: dict[str, bytes] = field(default_factory=dict)
    active_key_id: str = ""
    # One RSA signing key (JWT_PRIVATE_KEY_PEM / _FILE, or the development key under var/) ...
    jwt_private_key_pem: str = field(default="", repr=False)
    # ... or several with key ids and activation instants (JWT_SIGNING_KEYS), for rotation.
    jwt_signing_keys: tuple[SigningKeyConfig, ...] = ()
    access_token_seconds: int = 3600
    refresh_token_days: int = 90
    session_idle_minutes: int = 15
    session_absolute_hours: int = 12
    # Failures on one account from clients without its device cookie (smart_auth.throttle).
    login_max_failures_account: int = 20
    # Failures from one address, across accounts, before that address is slowed down.
    login_max_failures_address: int = 20
    login_window_seconds: int = 900
    # How many proxies in front of us append to X-Forwarded-For (0: trust none of it).
    trusted_proxy_hops: int = 0
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    max_body_bytes: int = 1_048_576
    # Secrets of our own first-party OAuth clients (the portal and the provider console).
    portal_client_secret: str = ""
    console_client_secret: str = ""
    # Where the portal keeps its server-side sessions: filesystem:///path or redis://...
    portal_session_url: str = ""
    # The AES-256-GCM key of the portal's session store (base64 of 32 bytes); empty: derived
    # from SECRET_KEY (portal_app.config.PortalConfig.session_key).
    portal_session_key: str = ""
    # Extra browser origins allowed by CORS on /fhir and the token endpoint, beside the
    # origins of registered redirect URIs ("https://app.example,https://other.example").
    cors_origins: tuple[str, ...] = ()
    # TOTP for providers and staff; only a demo practice turns it off (MFA_REQUIRED=0).
    mfa_required: bool = True
    # Where security alerts (break-glass access) go besides the patient's primary providers:
    # the practice administrators' addresses ("a@x.example,b@x.example").
    security_alert_emails: tuple[str, ...] = ()
    # How long a break-glass (emergency) access to a patient outside one's care stays open.
    break_glass_minutes: int = 60
    dev_mode: bool = False
    celery_eager: bool = False
    # "celery": enqueue a notification task after each commit that wrote outbox rows;
    # "none": leave outbox rows to a worker's sweep (or to nobody: API tests).
    notify_dispatch: str = "celery"
    # Base of the exponential retry backoff of notification emails, in seconds.
    notify_retry_backoff: int = 10
    # PostgreSQL connections per process (fhirserver.db.engine_options): one per request thread
    # plus spares; ``fhirserver serve`` sets DB_POOL_SIZE from --threads unless it is set.
    db_pool_size: int = 10
    db_max_overflow: int = 2

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


class _EnvSchema(Schema):
    """Validates the raw strings of the environment before they become Settings."""

    class Meta:
        unknown = INCLUDE

    DATABASE_URL = mf.String(required=True, validate=validate.Regexp(r"^(sqlite|postgresql)(\+\w+)?://"))
    BASE_URL = mf.Url(require_tld=False, schemes={"http", "https"})
    BROKER_URL = mf.String(validate=validate.Regexp(r"^(filesystem|redis|memory|amqp|sqla\+\w+)://"))
    SMTP_URL = mf.String(validate=validate.Regexp(r"^smtps?://"))
    MAIL_FROM = mf.Email()
    ACCESS_TOKEN_SECONDS = mf.Integer(validate=validate.Range(min=60, max=3600))
    SESSION_IDLE_MINUTES = mf.Integer(validate=validate.Range(min=1, max=120))
    SESSION_ABSOLUTE_HOURS = mf.Integer(validate=validate.Range(min=1, max=168))
    MAX_BODY_BYTES = mf.Integer(validate=validate.Range(min=1024))
    ENCRYPTION_KEYS = mf.String()
    NOTIFY_BODY = mf.String()
    NOTIFY_DISPATCH = mf.String(validate=validate.OneOf(["celery", "none"]))
    NOTIFY_RETRY_BACKOFF = mf.Integer(validate=validate.Range(min=1, max=600))
    TRUSTED_PROXY_HOPS = mf.Integer(validate=validate.Range(min=0, max=5))
    LOGIN_MAX_FAILURES_ACCOUNT = mf.Integer(validate=validate.Range(min=3, max=1000))
    LOGIN_MAX_FAILURES_ADDRESS = mf.Integer(validate=validate.Range(min=3, max=10000))
    LOGIN_WINDOW_SECONDS = mf.Integer(validate=validate.Range(min=60, max=86400))
    MFA_REQUIRED = mf.String(validate=validate.OneOf(["0", "1"]))
    CORS_ORIGINS = mf.String(validate=validate.Regexp(r"^(\s*https?://[^\s,/]+/?\s*)(,\s*https?://[^\s,/]+/?\s*)*$"))
    SECURITY_ALERT_EMAILS = mf.String()
    BREAK_GLASS_MINUTES = mf.Integer(validate=validate.Range(min=5, max=720))
    DB_POOL_SIZE = mf.Integer(validate=validate.Range(min=1, max=200))
    DB_MAX_OVERFLOW = mf.Integer(validate=validate.Range(min=0, max=200))

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        body = data.get("NOTIFY_BODY")
        if body is not None and "[URL]" not in body:
            raise ValidationError("must contain the [URL] placeholder", "NOTIFY_BODY")


def parse_keys(spec: str) -> dict[str, bytes]:
    """Parse ``kid:base64,kid:base64`` into AES-256 keys; the first one is the active key."""
    keys: dict[str, bytes] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kid, _, b64 = part.partition(":")
        try:
            key = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise SettingsError(f"ENCRYPTION_KEYS: key {kid!r} is not base64") from exc
        if len(key) != 32 or not kid:
            raise SettingsError(f"ENCRYPTION_KEYS: key {kid!r} must be 32 bytes with a key id")
        keys[kid] = key
    return keys


KID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_signing_keys(spec: str, read: Any = None) -> tuple[SigningKeyConfig, ...]:
    """Parse ``JWT_SIGNING_KEYS``: ``[kid:]path[@active-from],...`` (ENCRYPTION_KEYS' ``kid:`` style).

    ``path`` is a PEM file of an RSA private key; without ``kid:`` the key id is the key's
    thumbprint (the id a single JWT_PRIVATE_KEY_FILE key has, so tokens in flight keep
    verifying when a deployment moves to this variable). ``active-from`` is an ISO 8601
    instant with a time zone (``2026-07-01T12:00:00Z``); without it the key signs from the
    start. The signer is the key with the latest active-from that has passed.
    """
    read = read or (lambda path: Path(path).read_text())
    out: list[SigningKeyConfig] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kid, sep, rest = part.partition(":")
        if not sep or not KID_RE.match(kid):  # no kid given: the whole part is the path
            kid, rest = "", part
        path, at, when = rest.rpartition("@") if "@" in rest else (rest, "", "")
        active_from = 0.0
        if at:
            try:
                instant = datetime.fromisoformat(when.strip())
            except ValueError:
                instant = None
            if instant is None or instant.tzinfo is None:
                raise SettingsError(f"JWT_SIGNING_KEYS: key {kid or path!r}: active-from must be ISO 8601 with a zone")
            active_from = instant.timestamp()
        if not path.strip():
            raise SettingsError(f"JWT_SIGNING_KEYS: key {kid!r} has no file")
        try:
            pem = read(path.strip())
        except OSError as exc:
            name = kid or path.strip()
            raise SettingsError(f"JWT_SIGNING_KEYS: cannot read the file of key {name!r}: {exc.strerror}") from None
        out.append(SigningKeyConfig(kid=kid.strip(), pem=pem, active_from=active_from))
    kids = [k.kid for k in out if k.kid]
    if len(set(kids)) != len(kids):
        raise SettingsError("JWT_SIGNING_KEYS: two keys have the same key id")
    starts = [k.active_from for k in out]
    if len(set(starts)) != len(starts):
        raise SettingsError("JWT_SIGNING_KEYS: two keys have the same active-from (only one key signs at a time)")
    return tuple(out)


def _dev_secret(var_dir: Path, name: str, make: Any) -> str:
    """Create a development secret once under var/, so restarts keep sessions and data readable."""
    path = var_dir / name
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text()


def _new_rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment; development secrets are generated under VAR_DIR."""
    env = dict(os.environ if env is None else env)
    var_dir = Path(env.get("VAR_DIR", ROOT / "var"))
    env.setdefault("DATABASE_URL", f"sqlite:///{var_dir / 'fhirserver.db'}")
    errors = _EnvSchema().validate(env)
    if errors:
        names = ", ".join(f"{k}: {'; '.join(map(str, v))}" for k, v in sorted(errors.items()))
        raise SettingsError(f"invalid settings: {names}")

    dev = env.get("FHIRSERVER_ENV", "development") == "development"

    def secret(var: str, filename: str, make: Any) -> str:
        if env.get(var):
            return env[var]
        if not dev:
            raise SettingsError(f"{var} is required outside development")
        return _dev_secret(var_dir, filename, make)

    portal_key = env.get("PORTAL_SESSION_ENCRYPTION_KEY", "")
    if portal_key:
        try:
            ok = len(base64.b64decode(portal_key, altchars=b"-_", validate=True)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise SettingsError("PORTAL_SESSION_ENCRYPTION_KEY must be the base64 of 32 bytes")
    key_spec = secret("ENCRYPTION_KEYS", "encryption-keys", lambda: "dev1:" + base64.b64encode(os.urandom(32)).decode())
    keys = parse_keys(key_spec)
    pem = env.get("JWT_PRIVATE_KEY_PEM") or (
        Path(env["JWT_PRIVATE_KEY_FILE"]).read_text() if env.get("JWT_PRIVATE_KEY_FILE") else ""
    )
    signing_keys = parse_signing_keys(env.get("JWT_SIGNING_KEYS", ""))
    if signing_keys and pem:
        raise SettingsError("set JWT_SIGNING_KEYS or JWT_PRIVATE_KEY_PEM/JWT_PRIVATE_KEY_FILE, not both")
    if not pem and not signing_keys:
        pem = secret("JWT_PRIVATE_KEY_PEM", "jwt-private-key.pem", _new_rsa_pem)
    values: dict[str, Any] = {
        "database_url": env["DATABASE_URL"],
        "base_url": env.get("BASE_URL", "http://127.0.0.1:8080").rstrip("/"),
        "broker_url": env.get("BROKER_URL", "filesystem://"),
        "broker_folder": env.get("BROKER_FOLDER", str(var_dir / "broker")),
        "smtp_url": env.get("SMTP_URL", "smtp://127.0.0.1:8025"),
        "mail_from": env.get("MAIL_FROM", "notify@practice.example"),
        "office_name": env.get("OFFICE_NAME", "Our practice"),
        "notify_subject": env.get("NOTIFY_SUBJECT", "You have a new secure message"),
        "notify_body": env.get("NOTIFY_BODY", DEFAULT_NOTIFY_BODY),
        "secret_key": secret("SECRET_KEY", "secret-key", lambda: secrets.token_urlsafe(48)),
        "encryption_keys": keys,
        "active_key_id": env.get("ACTIVE_KEY_ID") or next(iter(keys)),
        "jwt_private_key_pem": pem,
        "jwt_signing_keys": signing_keys,
        "portal_client_secret": secret(
            "PORTAL_CLIENT_SECRET", "portal-client-secret", lambda: secrets.token_urlsafe(32)
        ),
        "console_client_secret": secret(
            "CONSOLE_CLIENT_SECRET", "console-client-secret", lambda: secrets.token_urlsafe(32)
        ),
        "portal_session_url": env.get("PORTAL_SESSION_URL", f"filesystem://{var_dir / 'portal-sessions'}"),
        "portal_session_key": env.get("PORTAL_SESSION_ENCRYPTION_KEY", ""),
        "cors_origins": tuple(o.strip().rstrip("/") for o in env.get("CORS_ORIGINS", "").split(",") if o.strip()),
        "mfa_required": env.get("MFA_REQUIRED", "1") != "0",
        "security_alert_emails": tuple(a.strip() for a in env.get("SECURITY_ALERT_EMAILS", "").split(",") if a.strip()),
        "dev_mode": dev,
        "celery_eager": env.get("CELERY_EAGER", "") == "1",
        "notify_dispatch": env.get("NOTIFY_DISPATCH", "celery"),
    }
    ints = {
        "access_token_seconds": "ACCESS_TOKEN_SECONDS",
        "session_idle_minutes": "SESSION_IDLE_MINUTES",
        "session_absolute_hours": "SESSION_ABSOLUTE_HOURS",
        "login_max_failures_account": "LOGIN_MAX_FAILURES_ACCOUNT",
        "login_max_failures_address": "LOGIN_MAX_FAILURES_ADDRESS",
        "login_window_seconds": "LOGIN_WINDOW_SECONDS",
        "argon2_time_cost": "ARGON2_TIME_COST",
        "argon2_memory_kib": "ARGON2_MEMORY_KIB",
        "max_body_bytes": "MAX_BODY_BYTES",
        "notify_retry_backoff": "NOTIFY_RETRY_BACKOFF",
        "trusted_proxy_hops": "TRUSTED_PROXY_HOPS",
        "break_glass_minutes": "BREAK_GLASS_MINUTES",
        "db_pool_size": "DB_POOL_SIZE",
        "db_max_overflow": "DB_MAX_OVERFLOW",
    }
    for attr, var in ints.items():
        if env.get(var):
            values[attr] = int(env[var])
    values.update(overrides)
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known})

"""Load the demo practice (fixtures/demo-practice.json) and register our first-party clients.

Idempotent by construction: every record has a stable key (resource ids such as
``Patient/demo-p1``, usernames, client ids), and seeding looks each one up before
creating it, so a second run writes nothing. Records that already exist are left
exactly as they are (a demo user who changed a password keeps it). Everything goes
through the public APIs - the repository (validation, WebMail rules, index,
encryption, outbox) and smart_auth's account and client functions - never around
them. Messages are written with a principal of their sending user, so the WebMail
rules check them as they would check a real send.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from fhirserver.config import ROOT, Settings
from fhirserver.core.errors import FhirError
from fhirserver.core.principal import Principal, system_principal
from fhirserver.core.scopes import ScopeSet
from fhirserver.models import ResourceRow

FIXTURE = ROOT / "fixtures" / "demo-practice.json"
SEED_CLIENT = "fhirserver-seed"
GRANT_TYPES = ("authorization_code", "refresh_token")
# Our own apps (not demo data: production registers them too, with `seed --clients-only`).
# The scope is the most each may ask for; the portal asks for a patient's own compartment,
# the console for what its signed-in user may see.
FIRST_PARTY_CLIENTS: tuple[dict[str, str], ...] = (
    {
        "client_id": "portal",
        "name": "Patient portal",
        "secret_setting": "portal_client_secret",
        "redirect_path": "/portal/callback",
        "scope": "openid fhirUser launch/patient offline_access patient/*.cruds",
    },
    {
        "client_id": "console",
        "name": "Provider console",
        "secret_setting": "console_client_secret",
        "redirect_path": "/portal/console/callback",
        "scope": "openid fhirUser offline_access user/*.cruds",
    },
)


class SeedError(Exception):
    """The fixture is unreadable or inconsistent, or a record was refused; says which key."""


@dataclass
class SeedReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str
    display_name: str
    must_change_password: bool


def load_fixture(path: Path = FIXTURE) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SeedError(f"fixture file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise SeedError(f"cannot read fixture file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("resources", "users")):
        raise SeedError(f"{path}: expected an object with 'resources' and 'users' lists")
    return data


def demo_logins(data: dict[str, Any]) -> list[DemoLogin]:
    """The published demo accounts, for the dev banner and the README."""
    return [
        DemoLogin(u["username"], u["password"], u["role"], u.get("displayName", ""), bool(u.get("mustChangePassword")))
        for u in data.get("users", [])
    ]


# ---------------------------------------------------------------- lookups


def _resource_exists(session: Session, res_type: str, res_id: str) -> bool:
    """Present, or deleted on purpose (a deleted demo record is left deleted)."""
    return session.get(ResourceRow, (res_type, res_id)) is not None


def _user_by_name(session: Session, username: str) -> Any:
    from smart_auth.accounts import find_by_username

    return find_by_username(session, username)


def _principal_of(user: Any) -> Principal:
    """The sending user's principal, as the web layer would build it from their token."""
    if user.role == "patient":
        pid = user.fhir_user.split("/", 1)[1]
        return Principal(
            role="patient",
            scopes=ScopeSet.parse("patient/*.cruds"),
            user_id=user.id,
            fhir_user=user.fhir_user,
            patient=pid,
            client_id=SEED_CLIENT,
        )
    return Principal(
        role=user.role,
        scopes=ScopeSet.parse("user/*.cruds"),
        user_id=user.id,
        fhir_user=user.fhir_user,
        client_id=SEED_CLIENT,
    )


def _refused(key: str, exc: FhirError) -> SeedError:
    return SeedError(f"{key} was refused: {exc.diagnostics}")


# ---------------------------------------------------------------- the parts


def seed_resources(session: Session, settings: Settings, data: dict[str, Any], report: SeedReport) -> None:
    from fhirserver.core.repository import Repository

    repo = Repository(session, settings, system_principal(SEED_CLIENT))
    for resource in data["resources"]:
        res_type, res_id = resource.get("resourceType"), resource.get("id")
        key = f"{res_type}/{res_id}"
        if not isinstance(res_type, str) or not isinstance(res_id, str):
            raise SeedError(f"a fixture resource lacks resourceType or id: {key}")
        if _resource_exists(session, res_type, res_id):
            report.existing.append(key)
            continue
        try:
            repo.create(res_type, copy.deepcopy(resource), res_id=res_id)
        except FhirError as exc:
            raise _refused(key, exc) from None
        report.created.append(key)


def seed_users(session: Session, settings: Settings, data: dict[str, Any], report: SeedReport) -> None:
    from smart_auth.accounts import AccountError, create_user
    from smart_auth.passwords import PasswordPolicyError

    for spec in data["users"]:
        key = f"user {spec['username']}"
        if _user_by_name(session, spec["username"]) is not None:
            report.existing.append(key)
            continue
        fhir_user = spec.get("fhirUser")
        if fhir_user and not _resource_exists(session, *fhir_user.split("/", 1)):
            raise SeedError(f"{key}: {fhir_user} is not in the fixture")
        try:
            create_user(
                session,
                username=spec["username"],
                password=spec["password"],
                role=spec["role"],
                settings=settings,
                fhir_user=fhir_user,
                display_name=spec.get("displayName", ""),
                must_change_password=bool(spec.get("mustChangePassword")),
                staff_of=tuple(spec.get("staffOf", ())),
            )
        except (AccountError, PasswordPolicyError) as exc:
            raise SeedError(f"{key} was refused: {exc}") from None
        session.flush()
        report.created.append(key)


def seed_messages(session: Session, settings: Settings, data: dict[str, Any], report: SeedReport) -> None:
    """Send each demo message as its sender (the WebMail rules stamp status, sent and threads)."""
    from fhirserver.core.repository import Repository

    for msg in data.get("messages", []):
        key = f"Communication/{msg['id']}"
        if _resource_exists(session, "Communication", msg["id"]):
            report.existing.append(key)
            continue
        sender = _user_by_name(session, msg["sentBy"])
        if sender is None:
            raise SeedError(f"{key}: its sender is not a demo user")
        repo = Repository(session, settings, _principal_of(sender))
        try:
            repo.create("Communication", copy.deepcopy(msg["resource"]), res_id=msg["id"])
        except FhirError as exc:
            raise _refused(key, exc) from None
        report.created.append(key)


def seed_clients(session: Session, settings: Settings, report: SeedReport | None = None) -> SeedReport:
    """Register the portal and console clients; bring them in line when the settings changed.

    Their secrets come from settings and their redirect URIs from BASE_URL, so an operator
    who rotates PORTAL_CLIENT_SECRET or moves BASE_URL runs ``seed --clients-only`` again.
    A client that already matches is not written at all.
    """
    from smart_auth.clients import ClientError, check_secret, redirect_uris, register_client
    from smart_auth.models import OAuthClient

    report = report or SeedReport()
    for spec in first_party_clients(settings):
        key = f"client {spec['client_id']}"
        row = session.get(OAuthClient, spec["client_id"])
        if row is not None and (
            check_secret(row, spec["secret"])
            and redirect_uris(row) == spec["redirect_uris"]
            and row.scope == spec["scope"]
            and row.first_party
        ):
            report.existing.append(key)
            continue
        try:
            register_client(session, **spec)
        except ClientError as exc:
            raise SeedError(f"{key}: {exc}") from None
        (report.updated if row is not None else report.created).append(key)
    return report


def demo_key_dir() -> Path:
    """Where the demo backend client's private key lives (VAR_DIR, as the other dev secrets)."""
    return Path(os.environ.get("VAR_DIR", ROOT / "var"))


def demo_backend_jwks(key_file: Path) -> dict[str, Any]:
    """The public JWKS of a demo backend client's key under var/, made on first use.

    The private key is generated on this machine and never committed, so no deployment can
    share it; only its public half is registered (inline), as a real client's would be.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc.jwk import RSAKey

    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    key = RSAKey.import_key(key_file.read_bytes())
    public = {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "RS384", "use": "sig"}
    return {"keys": [public]}


def seed_backend_clients(
    session: Session, data: dict[str, Any], report: SeedReport, key_dir: Path | None = None
) -> None:
    """The demo backend-service clients (``backendClients``): keys under var/, public JWKS inline."""
    from smart_auth.clients import ClientError, register_backend_client
    from smart_auth.models import OAuthClient

    for spec in data.get("backendClients", []):
        key = f"client {spec['clientId']}"
        jwks = demo_backend_jwks((key_dir or demo_key_dir()) / spec["keyFile"])
        inline = json.dumps(jwks, separators=(",", ":"))
        row = session.get(OAuthClient, spec["clientId"])
        if row is not None and row.jwks == inline and row.scope == spec["scope"]:
            report.existing.append(key)
            continue
        try:
            register_backend_client(
                session, client_id=spec["clientId"], name=spec["name"], scope=spec["scope"], jwks=jwks
            )
        except ClientError as exc:
            raise SeedError(f"{key}: {exc}") from None
        (report.updated if row is not None else report.created).append(key)


def first_party_clients(settings: Settings) -> list[dict[str, Any]]:
    """The keyword arguments of register_client for our own portal and console."""
    out = []
    for spec in FIRST_PARTY_CLIENTS:
        secret = getattr(settings, spec["secret_setting"])
        if not secret:
            raise SeedError(f"client {spec['client_id']}: {spec['secret_setting'].upper()} is empty")
        out.append(
            {
                "client_id": spec["client_id"],
                "name": spec["name"],
                "redirect_uris": [settings.base_url + spec["redirect_path"]],
                "scope": spec["scope"],
                "secret": secret,
                "first_party": True,
                "grant_types": GRANT_TYPES,
            }
        )
    return out


def seed_demo(session: Session, settings: Settings, data: dict[str, Any] | None = None) -> SeedReport:
    """The whole demo practice: resources, accounts, clients, then messages. The caller commits."""
    if not settings.dev_mode:
        raise SeedError("the demo practice (published passwords) loads only with FHIRSERVER_ENV=development")
    from fhirserver.core.ports import install_mailbox_users, install_portal_accounts
    from smart_auth import accounts, mailbox_users

    install_portal_accounts(accounts)  # the WebMail rules check the recipients' portal accounts
    install_mailbox_users(mailbox_users)  # and write the recipients' mailbox rows
    data = data or load_fixture()
    report = SeedReport()
    seed_resources(session, settings, data, report)
    seed_users(session, settings, data, report)
    seed_clients(session, settings, report)
    seed_backend_clients(session, data, report)
    seed_messages(session, settings, data, report)
    return report

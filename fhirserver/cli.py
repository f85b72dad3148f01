"""The ``fhirserver`` command: serve, worker, db upgrade, seed, client add, user, token.

Operators meet the server here, so every expected failure (a bad setting, an unknown
user, a malformed scope or URL, an unreachable database) ends in one clear line and a
non-zero exit, never a traceback. Messages name the problem, never the secret, token,
username or database password involved.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from fhirserver.config import ROOT, Settings, SettingsError, load_settings

CLI_CLIENT_ID = "fhirserver-cli"
DEFAULT_BIND = "127.0.0.1:8080"
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,99}$")
BIND_RE = re.compile(r"^(unix:/\S+|(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5})$")
# The access log carries the path only (%(U)s): query strings and referrers may hold PHI or OAuth codes.
# Then the user agent, and the request id the response carried (the app's X-Request-Id, or the one
# fhirserver.gunicorn_worker gave a refused request); every field is escaped (no control characters).
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms "%(a)s" %({x-request-id}o)s'

# ---------------------------------------------------------------- helpers


def var_dir() -> Path:
    """Where development state lives (the same rule as fhirserver.config)."""
    return Path(os.environ.get("VAR_DIR", ROOT / "var"))


def get_settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. JWT_PRIVATE_KEY_FILE unreadable
        raise click.ClickException(f"cannot read a settings file: {exc.strerror}") from None


def _db_message(exc: BaseException) -> str:
    """First line of a driver error: it names host/port or the file, never the password."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return f"database error: {first} (run `fhirserver db upgrade` first)"
    return f"database error: {first}"


@contextmanager
def db_session(settings: Settings) -> Iterator[Any]:
    """A session for one command; database errors become a one-line message."""
    from sqlalchemy.exc import SQLAlchemyError

    from fhirserver.db import make_sessionmaker

    maker = make_sessionmaker(settings.database_url)
    session = maker()
    try:
        yield session
    except SQLAlchemyError as exc:
        session.rollback()
        raise click.ClickException(_db_message(exc)) from None
    finally:
        session.close()
        maker.kw["bind"].dispose()


def check_redirect_uri(uri: str, *, allow_http_loopback: bool = True) -> str:
    """An absolute https URL (http only on a loopback host), no fragment, no userinfo."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise click.BadParameter("not a valid URL", param_hint="--redirect-uri") from None
    if parts.fragment or "@" in parts.netloc or not host:
        raise click.BadParameter("must be an absolute URL without fragment or user info", param_hint="--redirect-uri")
    loopback = host == "localhost"
    with suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme == "https" or (parts.scheme == "http" and loopback and allow_http_loopback):
        return uri
    raise click.BadParameter(
        "must use https (http is allowed only for 127.0.0.1, [::1] or localhost)", param_hint="--redirect-uri"
    )


def check_scope(scope: str, *, param_hint: str = "--scope") -> str:
    """Every scope must be a well-formed SMART resource scope or one we know; never guessed at."""
    from fhirserver.core.scopes import ScopeError, parse_scope
    from smart_auth.scope_policy import IDENTITY_SCOPES, LAUNCH, LAUNCH_PATIENT

    words = scope.split()
    if not words:
        raise click.BadParameter("must not be empty", param_hint=param_hint)
    for word in words:
        try:
            resource = parse_scope(word)
        except ScopeError as exc:
            raise click.BadParameter(str(exc), param_hint=param_hint) from None
        if resource is None and word not in IDENTITY_SCOPES | {LAUNCH_PATIENT, LAUNCH}:
            raise click.BadParameter(f"unknown scope {word!r}", param_hint=param_hint)
    return " ".join(words)


# ---------------------------------------------------------------- the command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """FHIR R4 server with SMART-on-FHIR auth and secure WebMail."""
    # A composition root: the FHIR core reaches accounts through this interface only.
    from fhirserver.core.ports import install_mailbox_users, install_portal_accounts
    from smart_auth import accounts, mailbox_users

    install_portal_accounts(accounts)
    install_mailbox_users(mailbox_users)


@main.command()
@click.option("--bind", default=None, help=f"HOST:PORT to listen on [default: $BIND or {DEFAULT_BIND}].")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--dev", is_flag=True, help="Development: also run the SMTP sink and a Celery worker with beat.")
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve https with this PEM certificate (chain); TLS normally ends at a proxy (docs/deploy.md).",
)
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
def serve(bind: str | None, workers: int, threads: int, dev: bool, certfile: Path | None, keyfile: Path | None) -> None:
    """Run the web server (gunicorn): API, auth, portal and console on one origin."""
    settings = get_settings()
    if (certfile is None) != (keyfile is None):
        raise click.UsageError("--certfile and --keyfile go together")
    if dev:
        from fhirserver.devserver import run_dev

        if not settings.dev_mode:
            raise click.ClickException("serve --dev runs only with FHIRSERVER_ENV=development")
        dev_bind = bind or urlsplit(settings.base_url).netloc
        if not BIND_RE.match(dev_bind):
            raise click.BadParameter("expected HOST:PORT", param_hint="--bind")
        sys.exit(run_dev(settings, bind=dev_bind, var=var_dir()))
    bind = bind or os.environ.get("BIND") or DEFAULT_BIND
    if not BIND_RE.match(bind):
        raise click.BadParameter("expected HOST:PORT or unix:/path", param_hint="--bind")
    from fhirserver.security_headers import strict_transport

    if not strict_transport(settings):
        # In gunicorn's own record shape, so that the error log stays one record per line.
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        click.echo(
            f"[{stamp}] [{os.getpid()}] [WARNING] development mode: cookies without the __Host- prefix and "
            "the Secure flag, and no HSTS (plain http on loopback); production (FHIRSERVER_ENV=production) "
            "has all three",
            err=True,
        )
    tls = (str(certfile), str(keyfile)) if certfile and keyfile else None
    from fhirserver.db import pool_size_for

    # Each worker process has its own pool: a connection per thread and the spares (the audit
    # writer). The workers read the settings again, from this environment.
    os.environ.setdefault("DB_POOL_SIZE", str(pool_size_for(threads)))
    run_gunicorn(bind=bind, workers=workers, threads=threads, tls=tls)


def run_gunicorn(*, bind: str, workers: int, threads: int, tls: tuple[str, str] | None = None) -> None:
    """Run gunicorn in this process on ``fhirserver.wsgi:application`` (each worker loads it).

    Our worker and logger classes (``fhirserver.gunicorn_worker``) answer gunicorn's own refusals
    with OperationOutcomes and escape control characters in its log lines.
    """
    from gunicorn.app.base import BaseApplication

    from fhirserver.gunicorn_worker import gunicorn_options

    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        **gunicorn_options(threads=threads),
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "graceful_timeout": 10,
        "proc_name": "fhirserver",
        # gunicorn >= 24 opens a control socket in ~/.gunicorn by default: unused here, and two
        # servers on one machine would share it.
        "control_socket_disable": True,
    }
    if tls is not None:
        from fhirserver.tls import server_context

        # TLS 1.2 or newer only (checklist D7), whatever OpenSSL's defaults are.
        options.update(certfile=tls[0], keyfile=tls[1], ssl_context=server_context)

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # settings unknown to an older gunicorn are skipped
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from fhirserver.wsgi import application

            return application

    _Gunicorn().run()


@main.command()
@click.option("--beat", is_flag=True, help="Also run the periodic scheduler (one per deployment).")
@click.option("--pool", type=click.Choice(["threads", "solo", "prefork"]), default="threads", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--loglevel", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO")
@click.option(
    "--schedule-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where beat keeps its state [default: $VAR_DIR/celerybeat-schedule].",
)
def worker(beat: bool, pool: str, concurrency: int, loglevel: str, schedule_file: Path | None) -> None:
    """Run the Celery worker that sends notifications (broker: BROKER_URL)."""
    settings = get_settings()
    from notifier.celery_app import make_celery

    if settings.broker_url.startswith("filesystem://"):
        for sub in ("", "processed"):
            Path(settings.broker_folder, sub).mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    argv = ["worker", f"--loglevel={loglevel}", f"--pool={pool}", f"--concurrency={concurrency}"]
    if beat:
        schedule_file = schedule_file or var_dir() / "celerybeat-schedule"
        schedule_file.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule-filename={schedule_file}"]
    app.worker_main(argv)


@main.command("mail-sink", hidden=True)
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8025, show_default=True)
def mail_sink(folder: Path, host: str, port: int) -> None:
    """Development SMTP server that saves each email as FOLDER/*.eml (used by serve --dev)."""
    from notifier.smtp_sink import run_sink

    folder.mkdir(parents=True, exist_ok=True)
    run_sink(folder=folder, host=host, port=port)


@main.group()
def keys() -> None:
    """Token-signing keys (JWT_SIGNING_KEYS): which key signs, which only verify."""


@keys.command("status")
def keys_status() -> None:
    """List the configured signing keys: kid, algorithm and state (never key material)."""
    settings = get_settings()
    from smart_auth import signing_keys

    try:
        lines = signing_keys.status_lines(settings)
    except signing_keys.KeyConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)


@main.group()
def audit() -> None:
    """The append-only audit log and its hash chain."""


@audit.command("seal")
def audit_seal() -> None:
    """Seal every committed, unsealed audit record now (the beat task does this regularly)."""
    from fhirserver.core import audit_chain

    settings = get_settings()
    with db_session(settings) as session:
        count = audit_chain.seal_all(session.get_bind(), audit_chain.chain_key(settings.secret_key))
    click.echo(f"sealed {count} audit record(s)")


@audit.command("verify")
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    metavar="SEQ:HASH",
    help="A head recorded outside the database (the beat task logs it; verify prints it); repeatable.",
)
def audit_verify(anchors: tuple[str, ...]) -> None:
    """Check the sealed chain link by link and report the unsealed tail; exit 1 if the chain is broken.

    With ``--anchor``, also check that each recorded head is still in the chain with its
    hash: a chain cut back at its end is otherwise valid link by link.
    """
    from datetime import UTC, datetime

    from fhirserver.core import audit_chain

    try:
        parsed = tuple(audit_chain.parse_anchor(a) for a in anchors)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--anchor") from None
    settings = get_settings()
    with db_session(settings) as session, session.get_bind().connect() as conn:
        result = audit_chain.verify(conn, audit_chain.chain_key(settings.secret_key), anchors=parsed)
        seq, digest = audit_chain.head(conn)
    age = ""
    if result.oldest_unsealed is not None:
        age = f", oldest {int((datetime.now(UTC) - result.oldest_unsealed).total_seconds())} s old"
    click.echo(f"sealed records: {result.sealed}")
    click.echo(f"unsealed tail: {result.unsealed} record(s){age}")
    if not result.ok:
        for problem in result.problems:
            click.echo(f"BROKEN: {problem}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"head: {seq}:{digest}")
    click.echo("audit chain OK")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (one Alembic history for all tables)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from fhirserver.migrate import upgrade

    settings = get_settings()
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.database_url)
    except SQLAlchemyError as exc:
        raise click.ClickException(_db_message(exc)) from None
    click.echo(f"database schema is up to date ({url.get_backend_name()})")


@main.command()
@click.option("--clients-only", is_flag=True, help="Register only the portal and console OAuth clients.")
@click.option(
    "--fixture",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Demo practice file [default: fixtures/demo-practice.json].",
)
def seed(clients_only: bool, fixture: Path | None) -> None:
    """Load the demo practice (development only), or just the first-party clients; idempotent."""
    from fhirserver import seed as seeding

    settings = get_settings()
    if not clients_only and not settings.dev_mode:
        raise click.ClickException(
            "refusing to load the demo practice (its accounts have published passwords) outside "
            "FHIRSERVER_ENV=development; use --clients-only to register the portal and console clients"
        )
    try:
        data = None if clients_only else seeding.load_fixture(fixture or seeding.FIXTURE)
    except seeding.SeedError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.notify_dispatch == "celery":
        # The demo messages' notifications are enqueued when the seed commits (else the sweep sends them).
        from notifier.dispatch import install

        install(settings)
    with db_session(settings) as session:
        try:
            if data is None:
                report = seeding.seed_clients(session, settings)
            else:
                report = seeding.seed_demo(session, settings, data)
        except seeding.SeedError as exc:
            session.rollback()
            raise click.ClickException(str(exc)) from None
        session.commit()
    click.echo(
        f"seed: {len(report.created)} created, {len(report.updated)} updated, {len(report.existing)} already present"
    )


@main.group()
def client() -> None:
    """OAuth clients."""


@client.command("add")
@click.option("--id", "client_id", required=True, help="The client_id (letters, digits, . _ -).")
@click.option("--name", required=True, help="Shown to users on the consent page.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Repeat for several (apps: at least one).")
@click.option("--scope", required=True, help="The most this client may ask for (space separated).")
@click.option("--public/--confidential", default=False, help="Public clients have no secret (PKCE only).")
@click.option("--first-party", is_flag=True, help="Our own app: no consent page.")
@click.option("--resource-server", is_flag=True, help="May introspect any token (RFC 7662); confidential only.")
@click.option("--backend", is_flag=True, help="A backend service: client_credentials with private_key_jwt.")
@click.option("--jwks-url", default=None, help="--backend: where the client publishes its public JWKS.")
@click.option(
    "--jwks-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="--backend: a file with the client's public JWKS (stored inline).",
)
@click.option("--launch-url", default=None, help="Apps: the SMART EHR launch URL (needs the 'launch' scope).")
def client_add(
    client_id: str,
    name: str,
    redirect_uris: tuple[str, ...],
    scope: str,
    public: bool,
    first_party: bool,
    resource_server: bool,
    backend: bool,
    jwks_url: str | None,
    jwks_file: Path | None,
    launch_url: str | None,
) -> None:
    """Register an OAuth client; a confidential client's secret is printed once."""
    if not CLIENT_ID_RE.match(client_id):
        raise click.BadParameter("3-100 characters: letters, digits, '.', '_' or '-'", param_hint="--id")
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="--name")
    if launch_url is not None and backend:
        raise click.BadParameter("backend services are not launched", param_hint="--launch-url")
    if backend or jwks_url or jwks_file:
        _add_backend_client(client_id, name.strip(), scope, jwks_url, jwks_file, backend=backend)
        return
    if not redirect_uris:
        raise click.BadParameter("at least one is required (or --backend)", param_hint="--redirect-uri")
    uris = [check_redirect_uri(u) for u in redirect_uris]
    scope = check_scope(scope)
    settings = get_settings()
    from smart_auth.clients import ClientError, register_client
    from smart_auth.models import OAuthClient

    secret = None if public else secrets.token_urlsafe(32)
    with db_session(settings) as session:
        if session.get(OAuthClient, client_id) is not None:
            raise click.ClickException("a client with this id already exists")
        try:
            register_client(
                session,
                client_id=client_id,
                name=name.strip(),
                redirect_uris=uris,
                scope=scope,
                secret=secret,
                first_party=first_party,
                resource_server=resource_server,
                launch_url=launch_url,
            )
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
    kind = "public" if public else "confidential"
    click.echo(f"registered {kind} client {client_id}", err=True)
    if secret:
        click.echo("client secret (shown only now; store it safely):", err=True)
        click.echo(secret)


def _add_backend_client(
    client_id: str, name: str, scope: str, jwks_url: str | None, jwks_file: Path | None, *, backend: bool
) -> None:
    """``client add --backend``: no redirect URI, no secret; its public keys by URL or from a file."""
    if not backend:
        raise click.BadParameter("--jwks-url and --jwks-file are for --backend clients", param_hint="--backend")
    if (jwks_url is None) == (jwks_file is None):
        raise click.BadParameter("give exactly one of --jwks-url and --jwks-file", param_hint="--jwks-url")
    scope = check_scope(scope)
    jwks = None
    if jwks_file is not None:
        try:
            jwks = jwks_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise click.BadParameter("cannot read the file", param_hint="--jwks-file") from None
    settings = get_settings()
    from smart_auth.clients import ClientError, register_backend_client
    from smart_auth.models import OAuthClient

    with db_session(settings) as session:
        if session.get(OAuthClient, client_id) is not None:
            raise click.ClickException("a client with this id already exists")
        try:
            register_backend_client(session, client_id=client_id, name=name, scope=scope, jwks_url=jwks_url, jwks=jwks)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
    click.echo(f"registered backend client {client_id} (client_credentials, private_key_jwt)", err=True)


def default_scope(role: str) -> str:
    return "patient/*.cruds" if role == "patient" else "user/*.cruds"


def check_scope_for_role(scope: str, role: str) -> str:
    """Only scopes the user's role may hold (the authorization server's rule); no patient picking here."""
    from fhirserver.core.scopes import parse_scope
    from smart_auth.scope_policy import LAUNCH_PATIENT, role_allows

    for word in scope.split():
        rs = parse_scope(word)
        if rs is not None and rs.context == "system":
            raise click.BadParameter("system scopes are for backend-service clients", param_hint="--scope")
        if not role_allows(role, word):
            raise click.BadParameter(f"{word!r} is not allowed for this user's role", param_hint="--scope")
        if role != "patient" and (word == LAUNCH_PATIENT or (rs is not None and rs.context == "patient")):
            raise click.BadParameter(
                "patient/ scopes need a patient in context, which this command does not set; use user/ scopes",
                param_hint="--scope",
            )
    return scope


@main.command()
@click.option("--user", "username", default=None, help="The user the token acts as.")
@click.option("--client", "backend_client", default=None, help="Or a backend client: a system token (5 min).")
@click.option(
    "--scope", default=None, help="Default: user/*.cruds (patient/*.cruds for a patient); required with --client."
)
@click.option("--lifetime", type=click.IntRange(60, 3600), default=3600, show_default=True, help="Seconds.")
def token(username: str | None, backend_client: str | None, scope: str | None, lifetime: int) -> None:
    """Print an access token for a user or a backend client (audited), for operators and scripts."""
    if (username is None) == (backend_client is None):
        raise click.UsageError("give exactly one of --user and --client")
    if backend_client is not None:
        _system_token(backend_client, scope, lifetime)
        return
    assert username is not None
    settings = get_settings()
    from fhirserver.core.audit import security_event
    from smart_auth.accounts import find_by_username
    from smart_auth.grants import issue_token

    with db_session(settings) as session:
        user = find_by_username(session, username)
        if user is None:
            raise click.ClickException("no such user")
        if not user.active:
            raise click.ClickException("this account is disabled")
        scope = check_scope_for_role(check_scope(scope or default_scope(user.role)), user.role)
        patient = user.fhir_user.split("/", 1)[1] if user.role == "patient" and user.fhir_user else None
        # A grant of its own: disabling the account or revoking the grant ends the token at once.
        access_token = issue_token(
            session,
            settings,
            user=user,
            client_id=CLI_CLIENT_ID,
            scope=scope,
            patient=patient,
            lifetime=lifetime,
        )
        security_event(
            session,
            subtype="cli-token",
            outcome="0",
            user_id=user.id,
            client_id=CLI_CLIENT_ID,
            description="operator token issued",
        )
        session.commit()
    click.echo(access_token)


def _system_token(client_id: str, scope: str | None, lifetime: int) -> None:
    """``token --client``: a system token of a backend client, within its registered scope."""
    if not scope:
        raise click.BadParameter("a system token needs --scope (system/...)", param_hint="--scope")
    scope = check_scope(scope)
    settings = get_settings()
    from fhirserver.core.audit import security_event
    from smart_auth.backend_services import issue_system_token
    from smart_auth.clients import get_client, is_backend
    from smart_auth.scope_policy import covers

    with db_session(settings) as session:
        row = get_client(session, client_id)
        if row is None or not is_backend(row):
            raise click.ClickException("no such backend client")
        allowed = row.scope.split()
        for word in scope.split():
            if not word.startswith("system/") or not covers(allowed, word):
                raise click.BadParameter(f"{word!r} is not within the client's registered scope", param_hint="--scope")
        access_token, _ = issue_system_token(session, settings, client_id=row.client_id, scope=scope, lifetime=lifetime)
        security_event(
            session,
            subtype="cli-token",
            outcome="0",
            client_id=row.client_id,
            description="operator system token issued",
        )
        session.commit()
    click.echo(access_token)


# ---------------------------------------------------------------- user accounts

STAFF_ROLES = ("provider", "staff", "auditor", "admin")
PRACTITIONER_RE = re.compile(r"^Practitioner/[A-Za-z0-9\-.]{1,64}$")


def _practitioner(session: Any, ref: str, param_hint: str) -> str:
    from fhirserver.models import ResourceRow

    if not PRACTITIONER_RE.match(ref):
        raise click.BadParameter("expected Practitioner/{id}", param_hint=param_hint)
    row = session.get(ResourceRow, ("Practitioner", ref.split("/", 1)[1]))
    if row is None or row.deleted:
        raise click.ClickException(f"{ref} does not exist")
    return ref


def _account(session: Any, username: str) -> Any:
    from smart_auth.accounts import find_by_username

    user = find_by_username(session, username)
    if user is None:
        raise click.ClickException("no such user")
    return user


def _audit_admin(session: Any, user: Any, description: str) -> None:
    from fhirserver.core.audit import security_event

    security_event(
        session, subtype="user-admin", outcome="0", user_id=user.id, client_id=CLI_CLIENT_ID, description=description
    )


@main.group("break-glass")
def break_glass_group() -> None:
    """Review break-glass (emergency) access: list grants, read a reason, end a grant."""


def _audit_review(session: Any, description: str) -> None:
    from fhirserver.core.audit import security_event

    security_event(session, subtype="break-glass-review", outcome="0", client_id=CLI_CLIENT_ID, description=description)


@break_glass_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also grants that expired or were revoked (kept 30 days).")
def break_glass_list(show_all: bool) -> None:
    """One line per grant: id, provider, patient id, opened, until, state (never the reason)."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from fhirserver.models import BreakGlassGrant

    settings = get_settings()
    now = datetime.now(UTC)
    with db_session(settings) as session:
        rows = session.execute(select(BreakGlassGrant).order_by(BreakGlassGrant.created_at.desc())).scalars().all()
        _audit_review(session, f"break-glass grants listed ({len(rows)})")
        session.commit()
        for g in rows:
            expires = g.expires_at if g.expires_at.tzinfo else g.expires_at.replace(tzinfo=UTC)
            state = "revoked" if g.revoked_at else ("expired" if expires <= now else "live")
            if state != "live" and not show_all:
                continue
            click.echo(
                f"{g.id}  {g.practitioner_ref}  Patient/{g.patient_id}  "
                f"{g.created_at:%Y-%m-%d %H:%M}Z  until {expires:%Y-%m-%d %H:%M}Z  {state}"
            )


@break_glass_group.command("reason")
@click.argument("grant_id")
def break_glass_reason(grant_id: str) -> None:
    """Print the reason the provider gave (decrypted; the reading is audited)."""
    from fhirserver import break_glass
    from fhirserver.models import BreakGlassGrant

    settings = get_settings()
    with db_session(settings) as session:
        grant = session.get(BreakGlassGrant, grant_id[:32])
        if grant is None:
            raise click.ClickException("no such break-glass grant")
        _audit_review(session, "break-glass reason read")
        session.commit()
        click.echo(break_glass.reason_of(settings, grant))


@break_glass_group.command("revoke")
@click.argument("grant_id")
def break_glass_revoke(grant_id: str) -> None:
    """End a grant now: the patient's record closes to that provider on the next request."""
    from fhirserver import break_glass

    settings = get_settings()
    with db_session(settings) as session:
        if not break_glass.revoke(session, grant_id[:32]):
            raise click.ClickException("no live break-glass grant with that id")
        _audit_review(session, "break-glass grant revoked")
        session.commit()
    click.echo("revoked", err=True)


@main.group("mailbox")
def mailbox_group() -> None:
    """The WebMail tables derived from the messages (mailbox and chart): check them against the resources."""


@mailbox_group.command("check")
@click.option("--fix", is_flag=True, help="Rewrite the rows that differ from the recomputed ones.")
def mailbox_check(fix: bool) -> None:
    """Recompute every mailbox row (from the messages, accounts and read state) and every chart row
    (from the messages' index rows); list the differences.

    Then each user's unread counter against their rows. One line per difference (message id,
    user id or subject reference, missing / unexpected / differs / count: ids only, never
    message content); exits 1 when there is any, unless --fix repaired them.
    """
    from fhirserver.webmail import chart, mailbox

    settings = get_settings()
    with db_session(settings) as session:
        boxed = mailbox.check(session, fix=fix)
        charted = chart.check(session, fix=fix)
        if fix:
            session.commit()
        else:
            session.rollback()
    for d in boxed:
        if d.problem == "count":
            click.echo(f"count  user {d.user_id}  (the unread counter differs from the rows)")
        else:
            click.echo(f"{d.problem}  Communication/{d.message_id}  user {d.user_id}")
    for c in charted:
        click.echo(f"{c.problem}  Communication/{c.message_id}  chart {c.subject_ref}")
    count = len(boxed) + len(charted)
    if not count:
        click.echo("mailbox and chart match the messages", err=True)
        return
    if fix:
        click.echo(f"fixed {count} row(s)", err=True)
        return
    click.echo(f"{count} row(s) differ (run `fhirserver mailbox check --fix` to repair)", err=True)
    sys.exit(1)


@main.group()
def user() -> None:
    """User accounts of the practice (patients get theirs through $grant-portal-access)."""


@user.command("add")
@click.option("--username", required=True)
@click.option("--role", type=click.Choice(STAFF_ROLES), required=True)
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--practitioner", default=None, help="Practitioner/{id}: required for a provider.")
@click.option("--staff-of", "staff_of", multiple=True, help="Practitioner/{id} a staff member works for.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of printing a one-time password."
)
def user_add(
    username: str,
    role: str,
    display_name: str,
    practitioner: str | None,
    staff_of: tuple[str, ...],
    password_stdin: bool,
) -> None:
    """Create an account; without --password-stdin a one-time password is printed once."""
    settings = get_settings()
    from smart_auth.accounts import AccountError, create_user, one_time_password
    from smart_auth.passwords import PasswordPolicyError

    if role == "provider" and not practitioner:
        raise click.BadParameter("a provider account needs --practitioner", param_hint="--practitioner")
    if role != "provider" and practitioner:
        raise click.BadParameter("only providers are linked to a Practitioner", param_hint="--practitioner")
    if staff_of and role != "staff":
        raise click.BadParameter("only staff work for providers", param_hint="--staff-of")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else one_time_password()
    with db_session(settings) as session:
        refs = [_practitioner(session, r, "--staff-of") for r in staff_of]
        if practitioner:
            _practitioner(session, practitioner, "--practitioner")
        try:
            account = create_user(
                session,
                username=username,
                password=password,
                role=role,
                settings=settings,
                fhir_user=practitioner,
                display_name=display_name.strip(),
                must_change_password=not password_stdin,
                staff_of=refs,
                enforce_policy=password_stdin,
            )
        except (AccountError, PasswordPolicyError) as exc:
            raise click.ClickException(str(exc)) from None
        _audit_admin(session, account, f"account created ({role})")
        session.commit()
    click.echo(f"created {role} account {account.username}", err=True)
    if not password_stdin:
        click.echo("one-time password (shown only now; the first sign-in must change it):", err=True)
        click.echo(password)


def _set_active(username: str, active: bool) -> None:
    settings = get_settings()
    from smart_auth.accounts import set_active

    with db_session(settings) as session:
        account = _account(session, username)
        if account.active == active:
            click.echo(f"{account.username} is already {'enabled' if active else 'disabled'}", err=True)
            return
        set_active(session, account, active)
        _audit_admin(session, account, "account enabled" if active else "account disabled: sessions and tokens ended")
        session.commit()
    click.echo(f"{'enabled' if active else 'disabled'} {account.username}", err=True)


@user.command("disable")
@click.option("--username", required=True)
def user_disable(username: str) -> None:
    """Disable an account: its sessions and tokens end at once."""
    _set_active(username, False)


@user.command("enable")
@click.option("--username", required=True)
def user_enable(username: str) -> None:
    """Enable a disabled account (its old sessions and tokens stay ended)."""
    _set_active(username, True)


@user.command("reset-mfa")
@click.option("--username", required=True)
def user_reset_mfa(username: str) -> None:
    """Remove a user's authenticator and recovery codes (a lost phone); audited.

    The user's sessions and tokens end; the next sign-in sets up a new authenticator.
    """
    settings = get_settings()
    from smart_auth.accounts import end_sessions_and_grants
    from smart_auth.mfa import reset

    with db_session(settings) as session:
        account = _account(session, username)
        had = reset(session, account)
        end_sessions_and_grants(session, account.id, "mfa-reset")
        _audit_admin(
            session,
            account,
            "two-step sign-in reset: authenticator and recovery codes removed, sessions and tokens ended"
            if had
            else "two-step sign-in reset: none was set up; sessions and tokens ended",
        )
        session.commit()
    click.echo(
        f"reset two-step sign-in of {account.username}; the next sign-in sets up a new authenticator"
        if had
        else f"{account.username} had no authenticator; nothing to remove (sessions ended)",
        err=True,
    )


@user.command("assign")
@click.option("--username", required=True, help="A staff account.")
@click.option("--provider", required=True, help="Practitioner/{id} the staff member works for.")
@click.option("--remove", is_flag=True, help="End the assignment instead.")
def user_assign(username: str, provider: str, remove: bool) -> None:
    """Assign a staff member to a provider (or --remove it); takes effect on the next request."""
    settings = get_settings()
    from smart_auth.accounts import AccountError, assign_staff

    with db_session(settings) as session:
        account = _account(session, username)
        ref = provider if remove else _practitioner(session, provider, "--provider")
        try:
            changed = assign_staff(session, account, ref, remove=remove)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        if changed:
            _audit_admin(session, account, "staff assignment removed" if remove else "staff assignment added")
        session.commit()
    verb = (
        ("removed from" if remove else "assigned to")
        if changed
        else ("was not assigned to" if remove else "already works for")
    )
    click.echo(f"{account.username} {verb} {provider}", err=True)


if __name__ == "__main__":
    main()

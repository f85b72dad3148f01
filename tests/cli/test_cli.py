"""The `fhirserver` command run as an operator would, against the per-run test databases.

Each command goes through click's CliRunner with a real environment (the settings
come from it exactly as in production); nothing of ours is mocked.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, func, inspect, select

from fhirserver.cli import main
from fhirserver.config import load_settings
from fhirserver.db import make_sessionmaker
from fhirserver.models import AuditLogRow, OutboxRow, ResourceRow, ResourceVersionRow
from fhirserver.seed import FIXTURE, load_fixture
from smart_auth.models import OAuthClient, StaffAssignment, UserAccount
from tests import conftest

COUNTED = (ResourceRow, ResourceVersionRow, UserAccount, OAuthClient, StaffAssignment, OutboxRow)


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def assert_clean_failure(result: Result, code: int, *phrases: str) -> None:
    """A non-zero exit with a one-line explanation, never a traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output


@pytest.fixture(scope="module")
def cli_settings(cli_env: dict[str, str]):
    return load_settings(cli_env)


@pytest.fixture()
def session(cli_settings):
    maker = make_sessionmaker(cli_settings.database_url)
    s = maker()
    yield s
    s.close()
    maker.kw["bind"].dispose()


def counts(session) -> dict[str, int]:
    """Row counts of every table seeding writes (the transaction is ended: SQLite readers lock)."""
    session.rollback()
    found = {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in COUNTED}
    session.rollback()
    return found


def production_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Production: every secret given explicitly (cli_env already carries them)."""
    return {**env, "FHIRSERVER_ENV": "production", "VAR_DIR": str(tmp_path)}


# ---------------------------------------------------------------- db upgrade


def test_db_upgrade_creates_a_fresh_sqlite_database(tmp_path: Path) -> None:
    db_file = tmp_path / "nested" / "fresh.db"
    env = conftest.test_env(tmp_path, f"sqlite:///{db_file}", conftest.free_port())
    result = invoke(env, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    engine = create_engine(f"sqlite:///{db_file}")
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
    assert {"resource", "resource_version", "user_account", "oauth_client", "outbox", "alembic_version"} <= tables
    again = invoke(env, "db", "upgrade")  # already at head: nothing to do, still success
    assert again.exit_code == 0, again.output


def test_db_upgrade_on_the_run_database_is_a_no_op(cli_env) -> None:
    result = invoke(cli_env, "db", "upgrade")
    assert result.exit_code == 0, result.output


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://fhir:s3cret-pw@127.0.0.1:1/nowhere"
    result = invoke(conftest.test_env(tmp_path, url, conftest.free_port()), "db", "upgrade")
    assert_clean_failure(result, 1, "database error")
    assert "s3cret-pw" not in result.output


def test_seed_on_an_empty_database_says_to_migrate(tmp_path: Path) -> None:
    env = conftest.test_env(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}", conftest.free_port())
    assert_clean_failure(invoke(env, "seed"), 1, "fhirserver db upgrade")


def test_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    env = conftest.test_env(tmp_path, "mysql://root@127.0.0.1/x", conftest.free_port())
    assert_clean_failure(invoke(env, "db", "upgrade"), 1, "DATABASE_URL")


# ---------------------------------------------------------------- seed


def test_seed_loads_the_demo_practice_and_is_idempotent(cli_env, cli_settings, session) -> None:
    first = invoke(cli_env, "seed")
    assert first.exit_code == 0, first.output
    after_first = counts(session)
    second = invoke(cli_env, "seed")
    assert second.exit_code == 0, second.output
    assert "0 created" in second.output
    assert counts(session) == after_first

    fixture = load_fixture(FIXTURE)
    for res in fixture["resources"]:
        row = session.get(ResourceRow, (res["resourceType"], res["id"]))
        assert row is not None and row.version_id == 1, res["id"]
    for msg in fixture["messages"]:
        row = session.get(ResourceRow, ("Communication", msg["id"]))
        assert row is not None and row.version_id == 1 and row.key_id, msg["id"]  # stored encrypted
    users = {u.username: u for u in session.scalars(select(UserAccount))}
    for spec in fixture["users"]:
        user = users[spec["username"]]
        assert (user.role, user.fhir_user) == (spec["role"], spec.get("fhirUser"))
        assert user.must_change_password == bool(spec.get("mustChangePassword"))
        assert spec["password"] not in user.password_hash
    assert sum(bool(u.get("mustChangePassword")) for u in fixture["users"]) == 1
    patients = [r for r in fixture["resources"] if r["resourceType"] == "Patient"]
    assert len(patients) == 6 and all(r.get("generalPractitioner") for r in patients)
    clients = {c.client_id: c for c in session.scalars(select(OAuthClient))}
    assert clients["portal"].first_party and clients["console"].first_party
    assert f"{cli_settings.base_url}/portal/callback" in clients["portal"].redirect_uris
    assert f"{cli_settings.base_url}/portal/console/callback" in clients["console"].redirect_uris


def test_seeded_messages_went_through_the_webmail_rules(cli_env, cli_settings, session) -> None:
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository

    assert invoke(cli_env, "seed").exit_code == 0
    repo = Repository(session, cli_settings, system_principal("tests"))
    reply = repo.read("Communication", "demo-m3").json()
    assert reply["status"] == "completed" and reply["sent"]
    assert reply["inResponseTo"] == [{"reference": "Communication/demo-m2"}]
    assert reply["partOf"] == [{"reference": "Communication/demo-m2"}]
    first = repo.read("Communication", "demo-m2").json()
    assert first["subject"] == {"reference": "Patient/demo-p2"}  # stamped: a patient writes about themselves
    assert any(c["coding"][0]["code"] == "webmail" for c in first["category"])


def test_seeded_passwords_are_the_published_ones(cli_env, cli_settings, session) -> None:
    from smart_auth.passwords import verify_password

    assert invoke(cli_env, "seed").exit_code == 0
    for spec in load_fixture(FIXTURE)["users"]:
        user = session.scalars(select(UserAccount).where(UserAccount.username == spec["username"])).one()
        assert verify_password(cli_settings, user.password_hash, spec["password"]), spec["username"]


def test_seed_refuses_the_demo_practice_outside_development(cli_env, tmp_path, session) -> None:
    env = production_env(cli_env, tmp_path)
    before = counts(session)
    result = invoke(env, "seed")
    assert_clean_failure(result, 1, "refusing", "--clients-only")
    assert counts(session) == before
    ok = invoke(env, "seed", "--clients-only")
    assert ok.exit_code == 0, ok.output


def test_seed_reports_a_missing_fixture(cli_env, tmp_path) -> None:
    assert_clean_failure(invoke(cli_env, "seed", "--fixture", str(tmp_path / "none.json")), 1, "not found")


# ---------------------------------------------------------------- client add


def test_client_add_prints_the_secret_once(cli_env, cli_settings, session) -> None:
    cid = f"cli-{uuid.uuid4().hex[:8]}"
    result = invoke(
        cli_env,
        "client",
        "add",
        "--id",
        cid,
        "--name",
        "Test app",
        "--redirect-uri",
        "https://app.example/cb",
        "--redirect-uri",
        "http://127.0.0.1:9999/cb",
        "--scope",
        "openid fhirUser launch/patient patient/Communication.rs",
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert len(secret.splitlines()) == 1 and len(secret) >= 40
    assert "shown only now" in result.stderr
    row = session.get(OAuthClient, cid)
    assert row is not None and row.client_secret_hash and secret not in row.client_secret_hash
    assert json.loads(row.redirect_uris) == ["https://app.example/cb", "http://127.0.0.1:9999/cb"]
    assert not row.first_party
    session.rollback()

    again = invoke(
        cli_env,
        "client",
        "add",
        "--id",
        cid,
        "--name",
        "Test app",
        "--redirect-uri",
        "https://app.example/cb",
        "--scope",
        "openid",
    )
    assert_clean_failure(again, 1, "already exists")
    assert again.stdout == ""  # no second secret
    session.rollback()
    assert session.get(OAuthClient, cid).client_secret_hash == row.client_secret_hash


def test_public_client_has_no_secret(cli_env, session) -> None:
    cid = f"pub-{uuid.uuid4().hex[:8]}"
    result = invoke(
        cli_env,
        "client",
        "add",
        "--id",
        cid,
        "--name",
        "Public app",
        "--public",
        "--redirect-uri",
        "https://pub.example/cb",
        "--scope",
        "patient/Patient.rs",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert session.get(OAuthClient, cid).client_secret_hash is None


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--redirect-uri", "http://evil.example/cb"], "https"),
        (["--redirect-uri", "not a url"], "--redirect-uri"),
        (["--redirect-uri", "https://app.example/cb#frag"], "fragment"),
        (["--scope", "patient/Patient.xyz"], "malformed scope"),
        (["--scope", "superuser"], "unknown scope"),
        (["--id", "a"], "--id"),
    ],
)
def test_client_add_rejects_bad_input(cli_env, session, args, phrase) -> None:
    opts = {"--id": f"bad-{uuid.uuid4().hex[:8]}", "--redirect-uri": "https://ok.example/cb", "--scope": "openid"}
    opts.update(dict(zip(args[::2], args[1::2], strict=True)))
    before = counts(session)
    result = invoke(cli_env, "client", "add", "--name", "Bad", *[x for kv in opts.items() for x in kv])
    assert_clean_failure(result, 2, phrase)
    assert counts(session) == before


# ---------------------------------------------------------------- token


def make_user(session, cli_settings, role: str = "admin", **extra) -> UserAccount:
    from smart_auth.accounts import create_user

    user = create_user(
        session,
        username=f"op{uuid.uuid4().hex[:8]}",
        password="long enough passphrase",
        role=role,
        settings=cli_settings,
        **extra,
    )
    session.commit()
    return user


def cli_token_events(session, user_id: str) -> int:
    session.rollback()
    rows = session.scalars(select(AuditLogRow))
    found = sum(1 for r in rows if b'"cli-token"' in r.content and user_id.encode() in r.content)
    session.rollback()
    return found


def test_token_is_a_jwt_the_server_accepts_and_is_audited(cli_env, cli_settings, session) -> None:
    from smart_auth.tokens import verify_access_token

    user = make_user(session, cli_settings)
    result = invoke(
        cli_env, "token", "--user", user.username.upper(), "--scope", "user/Practitioner.rs", "--lifetime", "600"
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    claims = verify_access_token(token, cli_settings)
    assert claims["sub"] == user.id
    assert claims["client_id"] == "fhirserver-cli"
    assert claims["scope"] == "user/Practitioner.rs"
    assert claims["exp"] - claims["iat"] == 600
    assert cli_token_events(session, user.id) == 1


def test_token_for_a_patient_carries_the_patient_context(cli_env, cli_settings, session) -> None:
    from smart_auth.tokens import verify_access_token

    assert invoke(cli_env, "seed").exit_code == 0
    result = invoke(cli_env, "token", "--user", "emma")
    assert result.exit_code == 0, result.output
    claims = verify_access_token(result.stdout.strip(), cli_settings)
    assert claims["patient"] == "demo-p1"
    assert claims["fhirUser"].endswith("Patient/demo-p1")
    assert claims["scope"] == "patient/*.cruds"


@pytest.mark.parametrize(
    ("args", "code", "phrase"),
    [
        (["--scope", "user/Patient.zz"], 2, "malformed scope"),
        (["--scope", "system/*.rs"], 2, "backend-service"),
        (["--scope", "patient/*.rs"], 2, "not allowed for this user's role"),
        (["--scope", "nonsense"], 2, "unknown scope"),
        (["--lifetime", "99999"], 2, "--lifetime"),
    ],
)
def test_token_rejects_bad_input_and_writes_no_audit(cli_env, cli_settings, session, args, code, phrase):
    user = make_user(session, cli_settings)
    result = invoke(cli_env, "token", "--user", user.username, *args)
    assert_clean_failure(result, code, phrase)
    assert result.stdout.count(".") < 2  # no token printed
    assert cli_token_events(session, user.id) == 0


def test_token_needs_user_scopes_for_a_provider(cli_env, cli_settings, session) -> None:
    from smart_auth.tokens import verify_access_token

    assert invoke(cli_env, "seed").exit_code == 0
    result = invoke(cli_env, "token", "--user", "dr.adams", "--scope", "launch/patient patient/*.rs")
    assert_clean_failure(result, 2, "patient in context")
    ok = invoke(cli_env, "token", "--user", "dr.adams")
    assert ok.exit_code == 0, ok.output
    claims = verify_access_token(ok.stdout.strip(), cli_settings)
    assert (claims["scope"], claims["role"], claims["fhirUser"]) == (
        "user/*.cruds",
        "provider",
        "Practitioner/demo-dr1",
    )


def test_token_for_an_unknown_user_does_not_echo_the_name(cli_env) -> None:
    name = f"ghost{uuid.uuid4().hex[:8]}"
    result = invoke(cli_env, "token", "--user", name)
    assert_clean_failure(result, 1, "no such user")
    assert name not in result.output


def test_token_for_a_disabled_user_is_refused(cli_env, cli_settings, session) -> None:
    user = make_user(session, cli_settings)
    user.active = False
    session.commit()
    session.rollback()
    assert_clean_failure(invoke(cli_env, "token", "--user", user.username), 1, "disabled")


# ---------------------------------------------------------------- user


def _practitioner(cli_settings) -> str:
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository

    maker = make_sessionmaker(cli_settings.database_url)
    with maker() as s:
        pid = (
            Repository(s, cli_settings, system_principal("tests"))
            .create("Practitioner", {"resourceType": "Practitioner", "name": [{"family": "Cli"}]})
            .res_id
        )
        s.commit()
    maker.kw["bind"].dispose()
    return f"Practitioner/{pid}"


def _api(cli_env, cli_settings, username: str) -> tuple[object, dict[str, str]]:
    """The run's API app and a bearer header for ``username`` from `fhirserver token`."""
    from fhirserver.app import create_app

    token = invoke(cli_env, "token", "--user", username, "--scope", "user/Practitioner.rs")
    assert token.exit_code == 0, token.output
    return create_app(cli_settings).test_client(), {"Authorization": "Bearer " + token.stdout.strip()}


def test_user_add_prints_a_one_time_password_once_and_audits(cli_env, cli_settings, session) -> None:
    doc = _practitioner(cli_settings)
    name = f"newdoc{uuid.uuid4().hex[:6]}"
    result = invoke(
        cli_env, "user", "add", "--username", name, "--role", "provider", "--practitioner", doc, "--name", "Dr New"
    )
    assert result.exit_code == 0, result.output
    password = result.stdout.strip()
    assert len(password) == 10 and password not in result.stderr
    session.rollback()
    user = session.scalar(select(UserAccount).where(UserAccount.username == name))
    assert user.role == "provider" and user.fhir_user == doc and user.must_change_password
    assert password not in user.password_hash
    events = [
        r.content
        for r in session.scalars(select(AuditLogRow))
        if b'"user-admin"' in r.content and user.id.encode() in r.content
    ]
    assert events and not any(name.encode() in e or password.encode() in e for e in events)
    session.rollback()  # SQLite: an open read transaction would hold the CLI's write lock
    again = invoke(cli_env, "user", "add", "--username", name, "--role", "auditor")
    assert_clean_failure(again, 1, "taken")


def test_user_add_with_a_chosen_password_and_staff_assignments(cli_env, cli_settings, session) -> None:
    doc, other = _practitioner(cli_settings), _practitioner(cli_settings)
    name = f"ma{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(
        main,
        [
            "user",
            "add",
            "--username",
            name,
            "--role",
            "staff",
            "--staff-of",
            doc,
            "--staff-of",
            other,
            "--password-stdin",
        ],
        env=cli_env,
        input="a quiet orchard in june\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing to print: the operator chose the password
    session.rollback()
    user = session.scalar(select(UserAccount).where(UserAccount.username == name))
    assert not user.must_change_password
    refs = set(session.scalars(select(StaffAssignment.practitioner_ref).where(StaffAssignment.user_id == user.id)))
    assert refs == {doc, other}
    weak = CliRunner().invoke(
        main,
        ["user", "add", "--username", f"x{name}", "--role", "admin", "--password-stdin"],
        env=cli_env,
        input="Password1!\n",
    )
    assert_clean_failure(weak, 1, "too easy to guess")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--role", "provider"], "--practitioner"),
        (["--role", "admin", "--practitioner", "Practitioner/x"], "only providers"),
        (["--role", "auditor", "--staff-of", "Practitioner/x"], "only staff"),
        (["--role", "staff", "--staff-of", "Patient/x"], "Practitioner/{id}"),
        (["--role", "patient"], "--role"),
    ],
)
def test_user_add_refuses_bad_options_cleanly(cli_env, args, phrase) -> None:
    result = invoke(cli_env, "user", "add", "--username", f"bad{uuid.uuid4().hex[:6]}", *args)
    assert_clean_failure(result, 2, phrase)


def test_user_add_refuses_an_unknown_practitioner(cli_env) -> None:
    result = invoke(
        cli_env,
        "user",
        "add",
        "--username",
        f"u{uuid.uuid4().hex[:6]}",
        "--role",
        "provider",
        "--practitioner",
        "Practitioner/does-not-exist",
    )
    assert_clean_failure(result, 1, "does not exist")


def test_user_disable_ends_sessions_and_tokens_at_once_and_enable_restores(cli_env, cli_settings, session) -> None:
    user = make_user(session, cli_settings)
    client, headers = _api(cli_env, cli_settings, user.username)
    assert client.get("/fhir/Practitioner", headers=headers).status_code == 200
    assert invoke(cli_env, "user", "disable", "--username", user.username).exit_code == 0
    assert client.get("/fhir/Practitioner", headers=headers).status_code == 401  # at once, not in an hour
    assert_clean_failure(invoke(cli_env, "token", "--user", user.username), 1, "disabled")
    assert invoke(cli_env, "user", "disable", "--username", user.username).exit_code == 0  # idempotent
    assert invoke(cli_env, "user", "enable", "--username", user.username).exit_code == 0
    assert client.get("/fhir/Practitioner", headers=headers).status_code == 401  # old tokens stay ended
    _, fresh = _api(cli_env, cli_settings, user.username)
    assert client.get("/fhir/Practitioner", headers=fresh).status_code == 200
    assert_clean_failure(invoke(cli_env, "user", "disable", "--username", "ghost-nobody"), 1, "no such user")


def test_user_assign_adds_and_removes_a_providers_staff(cli_env, cli_settings, session) -> None:
    doc = _practitioner(cli_settings)
    staff = make_user(session, cli_settings, role="staff")
    name, key = staff.username, (staff.id, doc)  # read now: a rollback expires them (SQLite locks)
    ok = invoke(cli_env, "user", "assign", "--username", name, "--provider", doc)
    assert ok.exit_code == 0 and "assigned to" in ok.output
    again = invoke(cli_env, "user", "assign", "--username", name, "--provider", doc)
    assert "already works for" in again.output
    session.rollback()
    assert session.get(StaffAssignment, key) is not None
    session.rollback()
    gone = invoke(cli_env, "user", "assign", "--username", name, "--provider", doc, "--remove")
    assert gone.exit_code == 0 and "removed from" in gone.output, gone.output
    session.rollback()
    assert session.get(StaffAssignment, key) is None
    session.rollback()
    admin = make_user(session, cli_settings).username
    assert_clean_failure(invoke(cli_env, "user", "assign", "--username", admin, "--provider", doc), 1, "only staff")


# ---------------------------------------------------------------- serve


def test_serve_rejects_a_bad_bind(cli_env) -> None:
    assert_clean_failure(invoke(cli_env, "serve", "--bind", "no port here"), 2, "HOST:PORT")


def test_serve_dev_refuses_production(cli_env, tmp_path) -> None:
    assert_clean_failure(invoke(production_env(cli_env, tmp_path), "serve", "--dev"), 1, "development")


def test_client_add_a_resource_server_that_may_introspect(cli_env, cli_settings, session) -> None:
    cid = f"rs-{uuid.uuid4().hex[:8]}"
    public = invoke(
        cli_env,
        "client",
        "add",
        "--id",
        cid,
        "--name",
        "RS",
        "--redirect-uri",
        "https://rs.example/cb",
        "--scope",
        "user/*.rs",
        "--public",
        "--resource-server",
    )
    assert_clean_failure(public, 1, "confidential")
    ok = invoke(
        cli_env,
        "client",
        "add",
        "--id",
        cid,
        "--name",
        "RS",
        "--redirect-uri",
        "https://rs.example/cb",
        "--scope",
        "user/*.rs",
        "--resource-server",
    )
    assert ok.exit_code == 0, ok.output
    session.rollback()
    assert session.get(OAuthClient, cid).resource_server is True
    session.rollback()

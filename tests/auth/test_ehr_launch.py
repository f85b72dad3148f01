"""SMART EHR launch (A10, A14; A5's launch-ehr, context-ehr-patient, context-banner, context-style;
A11 for launches): launch ids minted by the console's API, and the authorize side that uses them.

The console's token comes from a real sign-in (authorize, login with TOTP, code) of a
first-party client in the test client's browser session, so that the launch is bound to
that sign-in exactly as in production.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import time_machine
from click.testing import CliRunner
from sqlalchemy import func, select

from fhirserver.cli import main
from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from smart_auth import clients, grants, launch, tokens
from smart_auth.hashing import sha256_hex, utcnow
from smart_auth.models import AuthorizationCode, EhrLaunch, OAuthClient
from tests.auth.support import (
    RegisteredApp,
    authorize_params,
    csrf_from,
    exchange,
    get_code,
    login,
    make_client,
    make_user,
    new_web_client,
    pkce_pair,
    query_of,
)
from tests.factories import make_practice, patient_json, practitioner_json
from tests.support import test_env, uid

CONSOLE_SCOPE = "openid fhirUser offline_access user/*.cruds"
APP_SCOPE = "launch openid fhirUser patient/Patient.rs patient/Communication.rs"


@pytest.fixture()
def practice(db_session: Any, settings: Any) -> Any:
    return make_practice(db_session, settings)


def make_launchable(
    session: Any, *, first_party: bool = True, scope: str = APP_SCOPE, launch_url: str | None = None
) -> RegisteredApp:
    """A SMART app registered for the EHR launch (public, PKCE only)."""
    client_id = f"ehr-{uid()}"
    redirect = f"https://{client_id}.example/callback"
    clients.register_client(
        session,
        client_id=client_id,
        name=f"Chart app {client_id}",
        redirect_uris=[redirect],
        scope=scope,
        first_party=first_party,
        launch_url=launch_url or f"https://{client_id}.example/launch?mode=ehr",
    )
    session.commit()
    return RegisteredApp(client_id, redirect, None, scope)


def console_token(web: Any, session: Any, settings: Any, username: str) -> str:
    """Sign ``username`` in to a console-like first-party client in ``web``; its access token."""
    console = make_client(session, scope=CONSOLE_SCOPE, confidential=True, first_party=True)
    code, verifier = get_code(web, settings, console, username, CONSOLE_SCOPE)
    r = exchange(web, console, code, verifier)
    assert r.status_code == 200, r.json
    return str(r.json["access_token"])


def mint(web: Any, token: str | None, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return web.post("/auth/launch", json=body, headers=headers)


def ehr_authorize(web: Any, settings: Any, app: RegisteredApp, launch_id: str, scope: str = APP_SCOPE) -> Any:
    """The app's authorization request with ``launch``; returns (response, verifier)."""
    verifier, challenge = pkce_pair()
    r = web.get("/auth/authorize", query_string=authorize_params(settings, app, scope, challenge, launch=launch_id))
    return r, verifier


def refused_without_code(r: Any, app: RegisteredApp) -> dict[str, str]:
    assert r.status_code == 302, r.data[:400]
    assert r.headers["Location"].startswith(app.redirect_uri)
    q = query_of(r.headers["Location"])
    assert "code" not in q and q["state"] == "state-123", q
    return q


def launch_count(session: Any) -> int:
    session.expire_all()
    count = int(session.execute(select(func.count()).select_from(EhrLaunch)).scalar_one())
    session.rollback()  # SQLite: a transaction left open would lock the server out
    return count


# --- minting (the console's API) --------------------------------------------------------------


def test_A10_the_launch_url_carries_iss_and_an_opaque_launch_id_stored_hashed(
    web, db_session, settings, practice
) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    r = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id})
    assert r.status_code == 200, r.json
    value = r.json["launch"]
    url = urlsplit(r.json["launch_url"])
    q = query_of(r.json["launch_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"https://{app.client_id}.example/launch"
    assert q == {"mode": "ehr", "iss": settings.fhir_base, "launch": value}
    # Opaque: 256 random bits, nothing of the patient, user or client in it; a fresh one each time.
    assert len(value) == 43 and practice.patient_id not in value and app.client_id not in value
    again = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    assert again != value
    assert r.json["expires_in"] <= 600 and r.headers["Cache-Control"] == "no-store"
    # Only the hash is stored, with what the launch is bound to.
    db_session.expire_all()
    row = db_session.get(EhrLaunch, sha256_hex(value))
    assert row is not None and db_session.get(EhrLaunch, value) is None
    assert (row.user_id, row.client_id, row.patient_id) == (
        practice.provider_user_id,
        app.client_id,
        practice.patient_id,
    )
    claims = tokens.verify_access_token(token, settings)
    assert row.login_id == grants.get(db_session, claims["gid"]).login_id
    assert row.used_at is None
    assert (
        timedelta(0) < row.expires_at.replace(tzinfo=None) - row.created_at.replace(tzinfo=None) <= timedelta(minutes=5)
    )


def test_A10_apps_lists_only_apps_registered_for_the_ehr_launch(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    plain = make_client(db_session, first_party=False)
    token = console_token(web, db_session, settings, practice.provider_username)
    r = web.get("/auth/apps", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    listed = {a["client_id"]: a for a in r.json["apps"]}
    assert listed[app.client_id] == {
        "client_id": app.client_id,
        "name": f"Chart app {app.client_id}",
        "launch_url": f"https://{app.client_id}.example/launch?mode=ehr",
    }
    assert plain.client_id not in listed
    assert web.get("/auth/apps").status_code == 401


def test_A10_only_the_console_of_a_provider_or_staff_may_mint_for_a_patient_in_their_care(
    web, db_session, settings, practice
) -> None:
    app = make_launchable(db_session)
    body = {"client_id": app.client_id, "patient": practice.patient_id}
    before = launch_count(db_session)
    # No token, a malformed one, a forged one.
    for header in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer a.b.c"}, {"Authorization": "Basic x"}):
        r = web.post("/auth/launch", json=body, headers=header)
        assert r.status_code == 401 and r.json["error"] == "invalid_token", header
        assert "Bearer" in r.headers["WWW-Authenticate"]
    # A patient, even through a first-party client, and for their own record.
    patient_web = new_web_client(web.application)
    patient_token = console_token(patient_web, db_session, settings, practice.patient_username)
    r = mint(patient_web, patient_token, body)
    assert r.status_code == 403 and r.json["error"] == "insufficient_scope"
    # A provider's token held by a third-party app.
    third = make_client(db_session, scope=CONSOLE_SCOPE, confidential=True, first_party=False)
    third_web = new_web_client(web.application)
    verifier, challenge = pkce_pair()
    r = third_web.get("/auth/authorize", query_string=authorize_params(settings, third, CONSOLE_SCOPE, challenge))
    r = login(third_web, practice.provider_username)
    consent = third_web.get("/auth/authorize/consent")
    r = third_web.post(
        "/auth/authorize/consent",
        data={"csrf_token": csrf_from(consent.data), "scope": CONSOLE_SCOPE.split(), "action": "approve"},
    )
    r = third_web.get(r.headers["Location"]) if r.headers["Location"].endswith("/continue") else r
    code = query_of(r.headers["Location"])["code"]
    third_token = exchange(third_web, third, code, verifier).json["access_token"]
    r = mint(third_web, third_token, body)
    assert r.status_code == 403 and r.json["error"] == "insufficient_scope"
    # The console of another provider, for a patient outside their care: as if it did not exist.
    other = make_practice(db_session, settings)
    other_web = new_web_client(web.application)
    other_token = console_token(other_web, db_session, settings, other.provider_username)
    r = mint(other_web, other_token, body)
    assert r.status_code == 404 and r.json["error"] == "not_found"
    missing = mint(other_web, other_token, {"client_id": app.client_id, "patient": f"nobody{uid()}"})
    assert missing.status_code == 404 and missing.json == r.json
    assert launch_count(db_session) == before
    # The right provider may.
    token = console_token(web, db_session, settings, practice.provider_username)
    assert mint(web, token, body).status_code == 200
    assert launch_count(db_session) == before + 1


def test_A10_staff_launch_for_the_patients_of_the_providers_they_work_for(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    staff = make_user(db_session, settings, role="staff", staff_of=(practice.practitioner_ref,))
    token = console_token(web, db_session, settings, staff.username)
    r = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id})
    assert r.status_code == 200, r.json
    r, verifier = ehr_authorize(web, settings, app, r.json["launch"])
    code = query_of(r.headers["Location"])["code"]
    assert exchange(web, app, code, verifier).json["patient"] == practice.patient_id


def test_A10_minting_refuses_bad_bodies_unknown_apps_and_tokens_without_a_sign_in(
    app, web, db_session, settings, practice
) -> None:
    ehr_app = make_launchable(db_session)
    plain = make_client(db_session, first_party=False)
    token = console_token(web, db_session, settings, practice.provider_username)
    for body in (
        None,
        [],
        {"client_id": ehr_app.client_id},
        {"patient": practice.patient_id},
        {"client_id": ehr_app.client_id, "patient": practice.patient_id, "user": "someone"},
        {"client_id": ehr_app.client_id, "patient": "../Patient/x"},
        {"client_id": ehr_app.client_id, "patient": "x" * 65},
        {"client_id": 5, "patient": practice.patient_id},
    ):
        r = mint(web, token, body)
        assert r.status_code == 400 and r.json["error"] == "invalid_request", body
    r = web.post("/auth/launch", data="not json", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400
    for client_id in (plain.client_id, f"nobody{uid()}"):
        r = mint(web, token, {"client_id": client_id, "patient": practice.patient_id})
        assert r.status_code == 400 and r.json["error"] == "invalid_request"
    # A token printed by an operator (no browser sign-in): nothing a launch could be bound to.
    with app.app_context():
        from fhirserver.extensions import db
        from smart_auth.accounts import get_user

        user = get_user(db.session, practice.provider_user_id)
        cli_token = grants.issue_token(db.session, settings, user=user, client_id="console", scope=CONSOLE_SCOPE)
        db.session.commit()
        db.session.remove()
    r = mint(web, cli_token, {"client_id": ehr_app.client_id, "patient": practice.patient_id})
    assert r.status_code in (401, 403)


def test_A10_a_sign_in_that_ended_mints_nothing(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    with time_machine.travel(utcnow() + timedelta(minutes=settings.session_idle_minutes + 1)):
        r = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id})
    assert r.status_code == 401 and r.json["error"] == "invalid_token"


# --- using a launch (the authorize side) ------------------------------------------------------


def test_A10_A11_A14_the_ehr_launch_puts_the_launchs_patient_in_context_with_banner_and_style(
    web, db_session, settings, practice
) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    r, verifier = ehr_authorize(web, settings, app, value)
    # Signed in already, a first-party app: straight to the code, no patient picker.
    assert r.status_code == 302, r.data[:400]
    q = query_of(r.headers["Location"])
    assert "error" not in q and q["code"]
    body = exchange(web, app, q["code"], verifier).json
    assert body["patient"] == practice.patient_id
    assert set(body["scope"].split()) == set(APP_SCOPE.split())
    claims = tokens.verify_access_token(body["access_token"], settings)
    assert claims["patient"] == practice.patient_id and claims["sub"] == practice.provider_user_id
    # A14: a real boolean, and an absolute style URL that answers JSON.
    assert body["need_patient_banner"] is True
    style = urlsplit(body["smart_style_url"])
    assert style.scheme in ("http", "https") and style.netloc and body["smart_style_url"].startswith(settings.base_url)
    r = web.get(style.path)
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert {"color_background", "color_text", "font_family_body", "dim_border_radius"} <= set(r.json)
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    # The token reads the launch's patient and only that patient's compartment.
    fhir = web.get(f"/fhir/Patient/{practice.patient_id}", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert fhir.status_code == 200
    repo = Repository(db_session, settings, system_principal("tests"))
    doc = repo.create("Practitioner", practitioner_json(family=f"Doc{uid()}")).res_id
    sibling = repo.create("Patient", patient_json([practice.practitioner_ref, f"Practitioner/{doc}"])).res_id
    db_session.commit()
    fhir = web.get(f"/fhir/Patient/{sibling}", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert fhir.status_code == 404


def test_A14_a_standalone_launch_has_no_banner_or_style(web, db_session, settings, practice) -> None:
    app = make_client(db_session)
    code, verifier = get_code(web, settings, app, practice.patient_username, "launch/patient patient/Patient.rs")
    body = exchange(web, app, code, verifier).json
    assert body["patient"] == practice.patient_id
    assert "need_patient_banner" not in body and "smart_style_url" not in body


def test_A10_a_launch_id_is_single_use(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    r, _ = ehr_authorize(web, settings, app, value)
    assert "code" in query_of(r.headers["Location"])
    r, _ = ehr_authorize(web, settings, app, value)
    assert refused_without_code(r, app)["error"] == "invalid_request"


def test_A10_a_launch_id_expires_within_minutes(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    with time_machine.travel(utcnow() + timedelta(seconds=launch.LAUNCH_LIFETIME_SECONDS + 1)):
        r, _ = ehr_authorize(web, settings, app, value)
        assert refused_without_code(r, app)["error"] == "invalid_request"
    db_session.expire_all()
    assert db_session.get(EhrLaunch, sha256_hex(value)).used_at is None
    db_session.rollback()
    with time_machine.travel(utcnow() + timedelta(hours=1)):
        assert launch.purge(db_session) >= 1
        db_session.commit()
    assert db_session.get(EhrLaunch, sha256_hex(value)) is None


def test_A10_a_launch_is_bound_to_its_client(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    other = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    r, _ = ehr_authorize(web, settings, other, value)
    assert refused_without_code(r, other)["error"] == "invalid_request"
    # The attempt did not spend it: its own client still can use it.
    r, _ = ehr_authorize(web, settings, app, value)
    assert "code" in query_of(r.headers["Location"])


def test_A10_a_launch_is_bound_to_its_user_and_sign_in(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    codes_before = db_session.execute(select(func.count()).select_from(AuthorizationCode)).scalar_one()
    db_session.rollback()
    # Another provider of the same patient, in another browser.
    colleague = make_user(db_session, settings, role="provider", fhir_user=practice.practitioner_ref).username
    for username in (colleague, practice.provider_username):  # then the same user, another sign-in
        other_web = new_web_client(web.application)
        r, _ = ehr_authorize(other_web, settings, app, value)
        assert r.status_code in (302, 303) and r.headers["Location"].endswith("/auth/login")
        r = login(other_web, username)
        assert r.status_code == 303, r.data[:300]
        r = other_web.get(r.headers["Location"])
        assert refused_without_code(r, app)["error"] == "invalid_request", username
    db_session.expire_all()
    assert db_session.execute(select(func.count()).select_from(AuthorizationCode)).scalar_one() == codes_before
    db_session.rollback()
    # Another user signing in to the launching browser is refused too.
    web.post("/auth/logout", data={"csrf_token": csrf_from(web.get("/auth/logout").data)})
    r, _ = ehr_authorize(web, settings, app, value)
    r = login(web, colleague)
    r = web.get(r.headers["Location"])
    assert refused_without_code(r, app)["error"] == "invalid_request"


def test_A10_unknown_launch_or_launch_without_its_scope_gets_no_code(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    for launch_id, scope in (
        ("x" * 43, APP_SCOPE),
        ("", APP_SCOPE),
        ("y" * 600, APP_SCOPE),
        (value, "openid fhirUser patient/Patient.rs"),  # launch without the launch scope
    ):
        r, _ = ehr_authorize(web, settings, app, launch_id, scope)
        assert refused_without_code(r, app)["error"] == "invalid_request", launch_id[:5]


def test_A10_an_app_not_allowed_the_launch_scope_cannot_use_a_launch(web, db_session, settings, practice) -> None:
    app = make_launchable(db_session)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    # Re-registered without the launch scope (and so without a launch URL).
    clients.register_client(
        db_session,
        client_id=app.client_id,
        name="narrowed",
        redirect_uris=[app.redirect_uri],
        scope="openid patient/Patient.rs",
        first_party=True,
    )
    db_session.commit()
    r, _ = ehr_authorize(web, settings, app, value)
    assert refused_without_code(r, app)["error"] in ("invalid_scope", "invalid_request")


def test_A5_discovery_advertises_the_ehr_launch(client) -> None:
    doc = client.get("/.well-known/smart-configuration").json
    assert {"launch-ehr", "context-ehr-patient", "context-banner", "context-style"} <= set(doc["capabilities"])
    assert "launch" in doc["scopes_supported"]


def test_A10_registration_takes_a_launch_url_only_with_the_launch_scope(db_session, settings, tmp_path) -> None:
    with pytest.raises(clients.ClientError):
        clients.register_client(
            db_session,
            client_id=f"x{uid()}",
            name="x",
            redirect_uris=["https://x.example/cb"],
            scope="openid patient/Patient.rs",
            launch_url="https://x.example/launch",
        )
    db_session.rollback()
    with pytest.raises(clients.ClientError):
        clients.register_client(
            db_session,
            client_id=f"x{uid()}",
            name="x",
            redirect_uris=["https://x.example/cb"],
            scope=APP_SCOPE,
            launch_url="javascript:alert(1)",
        )
    db_session.rollback()
    env = test_env(
        tmp_path,
        settings.database_url,
        int(settings.base_url.rsplit(":", 1)[1]),
        SECRET_KEY=settings.secret_key,
        JWT_PRIVATE_KEY_PEM=settings.jwt_private_key_pem,
    )
    client_id = f"cli-ehr-{uid()}"
    result = CliRunner().invoke(
        main,
        [
            "client",
            "add",
            "--id",
            client_id,
            "--name",
            "Growth charts",
            "--redirect-uri",
            "https://charts.example/cb",
            "--scope",
            APP_SCOPE,
            "--public",
            "--launch-url",
            "https://charts.example/launch",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    db_session.expire_all()
    assert db_session.get(OAuthClient, client_id).launch_url == "https://charts.example/launch"
    db_session.rollback()
    result = CliRunner().invoke(
        main,
        [
            *("client", "add", "--id", f"x{uid()}", "--name", "x", "--redirect-uri", "https://x.example/cb"),
            *("--scope", "openid", "--public", "--launch-url", "https://x.example/launch"),
        ],
        env=env,
    )
    assert result.exit_code != 0 and "launch" in result.output and "Traceback" not in result.output


def test_A12_A10_unticking_launch_at_consent_drops_the_launch_context(web, db_session, settings, practice) -> None:
    """A user who unticks ``launch`` on the consent page gets no patient context from the launch."""
    app = make_launchable(db_session, first_party=False)
    token = console_token(web, db_session, settings, practice.provider_username)
    value = mint(web, token, {"client_id": app.client_id, "patient": practice.patient_id}).json["launch"]
    r, verifier = ehr_authorize(web, settings, app, value)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/authorize/consent"), r.data[:300]
    html = web.get("/auth/authorize/consent").get_data(as_text=True)
    kept = ["openid", "fhirUser"]  # launch and the patient/ scopes unticked
    r = web.post("/auth/authorize/consent", data={"csrf_token": csrf_from(html), "action": "approve", "scope": kept})
    assert r.status_code == 303, r.data[:300]
    r = web.get(r.headers["Location"])
    assert r.status_code == 302, r.data[:300]
    q = query_of(r.headers["Location"])
    assert q.get("code"), q
    body = exchange(web, app, q["code"], verifier).json
    assert "patient" not in body and "need_patient_banner" not in body, body
    assert set(body["scope"].split()) == set(kept)

"""CORS by allowlist on /fhir and the token endpoint; discovery open to every origin (A6, F7).

Each test builds an app of its own: the allowlist is cached per process for a few
seconds (smart_auth.cors_origins), so a fresh app reads the clients registered just
before. The runtime-registration test moves the clock past the refresh instead.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from fhirserver.extensions import db
from fhirserver.models import AuditLogRow
from smart_auth import clients
from smart_auth.cors_origins import REFRESH_SECONDS
from tests.auth.support import build_app, make_client, new_web_client
from tests.factories import PATIENT_SCOPE, message_json, token_for
from tests.support import uid

FHIR = "application/fhir+json"
FHIR_HEADERS = ["Authorization", "Content-Type", "Prefer", "If-Match", "If-None-Exist", "If-None-Match"]
DISCOVERY = [
    "/.well-known/smart-configuration",
    "/fhir/.well-known/smart-configuration",
    "/fhir/metadata",
    "/auth/jwks",
    "/auth/.well-known/openid-configuration",
]


def _dispose(app: Any) -> None:
    with app.app_context():
        db.engine.dispose()


@pytest.fixture()
def browser_app(db_session: Any) -> Any:
    """A registered public client whose redirect URI is on an origin of its own."""
    origin = f"https://app-{uid()}.example"
    return make_client(db_session, first_party=True, redirect_uri=f"{origin}/callback"), origin


@pytest.fixture()
def fresh(settings: Any, browser_app: Any) -> Iterator[Any]:
    """An app built after the client was registered (its allowlist cache starts empty)."""
    app = build_app(settings)
    yield app
    _dispose(app)


@pytest.fixture()
def bearer(app: Any, settings: Any, practice: Any) -> dict[str, str]:
    token = token_for(app, settings, practice.patient_user_id, PATIENT_SCOPE, patient=practice.patient_id)
    return {"Authorization": f"Bearer {token}"}


def _csv(value: str | None) -> set[str]:
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def _assert_allowed(resp: Any, origin: str) -> None:
    assert resp.headers.get("Access-Control-Allow-Origin") == origin, dict(resp.headers)
    assert "Access-Control-Allow-Credentials" not in resp.headers  # bearer tokens, never cookies
    assert "origin" in _csv(resp.headers.get("Vary"))


def _refused_audits(db_session: Any, address: str) -> int:
    db_session.rollback()
    rows = db_session.execute(select(AuditLogRow.content)).scalars()
    count = sum(1 for c in rows if b"fhir-unauthorized" in c and address.encode() in c)
    db_session.rollback()  # SQLite: every transaction holds the write lock (BEGIN IMMEDIATE)
    return count


# --- /fhir --------------------------------------------------------------------------------------


def test_A6_F7_allowed_origin_reads_fhir_answers(fresh: Any, browser_app: Any, bearer: Any, practice: Any) -> None:
    _, origin = browser_app
    web = new_web_client(fresh)
    read = web.get(f"/fhir/Patient/{practice.patient_id}", headers={**bearer, "Origin": origin})
    assert read.status_code == 200
    _assert_allowed(read, origin)
    exposed = _csv(read.headers.get("Access-Control-Expose-Headers"))
    assert {"location", "etag", "content-location", "last-modified", "www-authenticate"} <= exposed
    search = web.get("/fhir/Communication", query_string={"_count": "5"}, headers={**bearer, "Origin": origin})
    assert search.status_code == 200
    _assert_allowed(search, origin)
    # A POST (create) too, and its Location is readable by the page.
    body = message_json(practice.patient_ref, practice.practitioner_ref, practice.patient_ref)
    created = web.post(
        "/fhir/Communication", data=json.dumps(body), headers={**bearer, "Origin": origin, "Content-Type": FHIR}
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    _assert_allowed(created, origin)
    assert "location" in _csv(created.headers.get("Access-Control-Expose-Headers"))


def test_A6_F7_preflight_needs_no_token_and_is_not_audited(fresh: Any, browser_app: Any, db_session: Any) -> None:
    _, origin = browser_app
    web = new_web_client(fresh)
    address = web.environ_base["REMOTE_ADDR"]
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        r = web.open(
            "/fhir/Communication/abc",
            method="OPTIONS",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": ", ".join(h.lower() for h in FHIR_HEADERS),
            },
        )
        assert r.status_code in (200, 204), r.get_data(as_text=True)
        _assert_allowed(r, origin)
        assert method.lower() in _csv(r.headers.get("Access-Control-Allow-Methods"))
        assert {h.lower() for h in FHIR_HEADERS} <= _csv(r.headers.get("Access-Control-Allow-Headers"))
    assert _refused_audits(db_session, address) == 0
    # The control: the same client without a token on a real request is refused and audited.
    assert web.get("/fhir/Communication", headers={"Origin": origin}).status_code == 401
    assert _refused_audits(db_session, address) == 1


def test_A6_F7_error_outcomes_are_readable_by_the_app(fresh: Any, browser_app: Any, bearer: Any) -> None:
    _, origin = browser_app
    web = new_web_client(fresh)
    no_token = web.get("/fhir/Communication", headers={"Origin": origin})
    assert no_token.status_code == 401 and no_token.headers["WWW-Authenticate"].startswith("Bearer")
    assert no_token.get_json(force=True)["resourceType"] == "OperationOutcome"
    _assert_allowed(no_token, origin)
    for path in ("/fhir/NoSuchType", "/fhir/Patient/does-not-exist"):
        r = web.get(path, headers={**bearer, "Origin": origin})
        assert r.status_code in (400, 404) and r.get_json(force=True)["resourceType"] == "OperationOutcome"
        _assert_allowed(r, origin)
    too_big = web.post(
        "/fhir/Communication",
        data=b"x" * (fresh.config["MAX_CONTENT_LENGTH"] + 10),
        headers={**bearer, "Origin": origin, "Content-Type": FHIR},
    )
    assert too_big.status_code == 413
    _assert_allowed(too_big, origin)


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://app.example.evil.example"])
def test_A6_F7_disallowed_origin_gets_no_cors(fresh: Any, bearer: Any, practice: Any, origin: str) -> None:
    web = new_web_client(fresh)
    read = web.get(f"/fhir/Patient/{practice.patient_id}", headers={**bearer, "Origin": origin})
    assert read.status_code == 200  # CORS is no access control: the page just cannot read it
    assert "Access-Control-Allow-Origin" not in read.headers
    assert "origin" in _csv(read.headers.get("Vary"))
    pre = web.open(
        "/fhir/Communication",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert not [name for name, _ in pre.headers if name.lower().startswith("access-control-")]


# --- the token endpoint ---------------------------------------------------------------------------


def test_A6_token_endpoint_allows_only_the_clients_own_origin(fresh: Any, browser_app: Any, db_session: Any) -> None:
    registered, origin = browser_app
    other = make_client(db_session, first_party=True, redirect_uri=f"https://other-{uid()}.example/cb")
    web = new_web_client(fresh)
    pre = web.open(
        "/auth/token",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code in (200, 204)
    _assert_allowed(pre, origin)
    assert "post" in _csv(pre.headers.get("Access-Control-Allow-Methods"))
    assert "content-type" in _csv(pre.headers.get("Access-Control-Allow-Headers"))
    form = {"grant_type": "authorization_code", "code": "not-a-code", "redirect_uri": registered.redirect_uri}
    # The error of a bad exchange is readable by the app's page ...
    mine = web.post("/auth/token", data={**form, "client_id": registered.client_id}, headers={"Origin": origin})
    assert mine.status_code == 400 and mine.json["error"] == "invalid_grant"
    _assert_allowed(mine, origin)
    # ... but not by a page on another client's origin, nor by a stranger.
    theirs = web.post("/auth/token", data={**form, "client_id": other.client_id}, headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in theirs.headers
    evil = web.post(
        "/auth/token", data={**form, "client_id": registered.client_id}, headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in evil.headers
    evil_pre = web.open(
        "/auth/token",
        method="OPTIONS",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in evil_pre.headers
    # Revocation serves public clients too (a browser app's sign-out); introspection does not.
    revoke = web.post(
        "/auth/revoke", data={"token": "nothing", "client_id": registered.client_id}, headers={"Origin": origin}
    )
    assert revoke.status_code == 200
    _assert_allowed(revoke, origin)
    introspect = web.post("/auth/introspect", data={"token": "nothing"}, headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in introspect.headers


# --- discovery, configuration, registration at runtime ------------------------------------------


@pytest.mark.parametrize("path", DISCOVERY)
def test_A6_F7_discovery_is_open_to_every_origin(client: Any, path: str) -> None:
    origin = f"https://anyone-{uid()}.example"
    r = client.get(path, headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_A6_metadata_preflight_is_open_and_reports_cors(client: Any) -> None:
    origin = f"https://anyone-{uid()}.example"
    pre = client.open(
        "/fhir/metadata", method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "get" in _csv(pre.headers.get("Access-Control-Allow-Methods"))
    cs = client.get("/fhir/metadata").get_json(force=True)
    assert cs["rest"][0]["security"]["cors"] is True


def test_A6_configured_origins_are_allowed(settings: Any, db_session: Any, bearer: Any, practice: Any) -> None:
    extra = f"https://extra-{uid()}.example"
    registered = make_client(db_session, first_party=True)
    app = build_app(dataclasses.replace(settings, cors_origins=(extra + "/",)))
    try:
        web = new_web_client(app)
        _assert_allowed(web.get(f"/fhir/Patient/{practice.patient_id}", headers={**bearer, "Origin": extra}), extra)
        form = {"grant_type": "authorization_code", "code": "x", "client_id": registered.client_id}
        _assert_allowed(web.post("/auth/token", data=form, headers={"Origin": extra}), extra)
    finally:
        _dispose(app)


def test_A6_client_registered_at_runtime_becomes_allowed(settings: Any, db_session: Any, bearer: Any) -> None:
    origin = f"https://late-{uid()}.example"
    app = build_app(settings)
    try:
        web = new_web_client(app)
        pre = {
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        with time_machine.travel(time.time(), tick=False) as clock:
            assert "Access-Control-Allow-Origin" not in web.open("/fhir/Patient", method="OPTIONS", headers=pre).headers
            # `fhirserver client add` while the server runs (another process, same database).
            clients.register_client(
                db_session, client_id=f"late-{uid()}", name="Late", redirect_uris=[f"{origin}/cb"], scope="openid"
            )
            db_session.commit()
            # Within the refresh interval the cached list answers (no query per preflight) ...
            assert "Access-Control-Allow-Origin" not in web.open("/fhir/Patient", method="OPTIONS", headers=pre).headers
            clock.shift(REFRESH_SECONDS + 1)
            # ... and after it the new client's origin is allowed.
            _assert_allowed(web.open("/fhir/Patient", method="OPTIONS", headers=pre), origin)
    finally:
        _dispose(app)

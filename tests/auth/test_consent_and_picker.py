"""Consent for third-party clients and the patient picker for providers and staff."""

from __future__ import annotations

import re

from sqlalchemy import select

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.models import AuditLogRow
from smart_auth.models import Consent
from smart_auth.tokens import verify_access_token
from tests.auth.support import (
    authorize_params,
    csrf_from,
    exchange,
    login,
    make_client,
    make_user,
    new_web_client,
    pkce_pair,
    query_of,
)
from tests.factories import patient_json, practitioner_json
from tests.support import uid

SCOPE = "launch/patient patient/Patient.rs patient/Communication.rs offline_access"


def _start(web, settings, client_app, scope, username=None):
    verifier, challenge = pkce_pair()
    r = web.get("/auth/authorize", query_string=authorize_params(settings, client_app, scope, challenge))
    if username:
        r = login(web, username)
        r = web.get(r.headers["Location"])
    return r, verifier


# --- consent ------------------------------------------------------------------------------------


def test_consent_lists_every_scope_and_honours_deselection(app, db_session, settings) -> None:
    patient = make_user(db_session, settings)
    third = make_client(db_session, first_party=False)
    web = new_web_client(app)
    r, verifier = _start(web, settings, third, SCOPE, patient.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/authorize/consent")
    page = web.get("/auth/authorize/consent")
    assert page.status_code == 200
    html = page.data.decode()
    boxes = re.findall(r'type="checkbox" name="scope" id="[^"]+" value="([^"]+)" checked', html)
    assert boxes == SCOPE.split()
    assert "Keep access after you sign out" in html and "Long-term access" in html  # offline warning
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert third.redirect_uri.split("/callback")[0] in page.headers["Content-Security-Policy"]
    chosen = ["launch/patient", "patient/Patient.rs"]
    r = web.post(
        "/auth/authorize/consent",
        data={"csrf_token": csrf_from(html), "action": "approve", "scope": [*chosen, "user/*.cruds"]},
    )
    assert r.status_code == 303
    r = web.get(r.headers["Location"])
    q = query_of(r.headers["Location"])
    body = exchange(web, third, q["code"], verifier).json
    assert body["scope"] == " ".join(chosen) and "refresh_token" not in body
    row = db_session.get(Consent, (patient.id, third.client_id))
    assert row is not None and row.scope == " ".join(chosen)
    db_session.rollback()

    # The same request again skips the page (approved before) ...
    r, verifier = _start(web, settings, third, "launch/patient patient/Patient.rs")
    assert r.status_code == 302 and "code=" in r.headers["Location"]
    # ... but asking for more shows it again.
    r, _ = _start(web, settings, third, SCOPE)
    assert r.headers["Location"].endswith("/auth/authorize/consent")
    events = db_session.execute(select(AuditLogRow.content)).scalars()
    assert any(b'"code":"consent"' in e and third.client_id.encode() in e for e in events)


def test_consent_denied_and_csrf_required(app, db_session, settings) -> None:
    patient = make_user(db_session, settings)
    third = make_client(db_session, first_party=False)
    web = new_web_client(app)
    _start(web, settings, third, SCOPE, patient.username)
    page = web.get("/auth/authorize/consent")
    # No CSRF token: refused, nothing granted.
    r = web.post("/auth/authorize/consent", data={"action": "approve", "scope": SCOPE.split()})
    assert r.status_code == 400
    r = web.post("/auth/authorize/consent", data={"csrf_token": csrf_from(page.data), "action": "deny"})
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert q["error"] == "access_denied" and q["state"] == "state-123" and "code" not in q
    assert db_session.get(Consent, (patient.id, third.client_id)) is None


def test_first_party_client_skips_consent(app, db_session, settings) -> None:
    patient = make_user(db_session, settings)
    first = make_client(db_session, first_party=True)
    web = new_web_client(app)
    r, _ = _start(web, settings, first, SCOPE, patient.username)
    assert r.status_code == 302 and "code=" in r.headers["Location"]


# --- patient picker -----------------------------------------------------------------------------


def _practice(db_session, settings):
    repo = Repository(db_session, settings, system_principal("tests"))
    doc = repo.create("Practitioner", practitioner_json(family=f"Doc{uid()}")).res_id
    other = repo.create("Practitioner", practitioner_json(family=f"Other{uid()}")).res_id
    mine = [
        repo.create("Patient", patient_json([f"Practitioner/{doc}"], family=f"Zed{uid()}", given="Anna")).res_id,
        repo.create("Patient", patient_json([f"Practitioner/{doc}"], family=f"Able{uid()}", given="Ben")).res_id,
    ]
    theirs = repo.create("Patient", patient_json([f"Practitioner/{other}"], family=f"Far{uid()}")).res_id
    db_session.commit()
    return doc, other, mine, theirs


def test_provider_picks_one_of_their_patients(app, db_session, settings) -> None:
    doc, _, mine, theirs = _practice(db_session, settings)
    provider = make_user(db_session, settings, role="provider", fhir_user=f"Practitioner/{doc}")
    console = make_client(db_session)
    web = new_web_client(app)
    r, verifier = _start(web, settings, console, "launch/patient patient/*.rs user/Patient.rs", provider.username)
    assert r.status_code == 303 and r.headers["Location"].endswith("/auth/authorize/patient")
    page = web.get("/auth/authorize/patient")
    html = page.data.decode()
    listed = re.findall(r'name="patient" id="[^"]+" value="([^"]+)"', html)
    assert sorted(listed) == sorted(mine) and theirs not in html
    assert html.index("Ben Able") < html.index("Anna Zed")  # sorted by name
    assert "<label" in html and "<main" in html
    token = csrf_from(html)
    # Someone else's patient is refused.
    bad = web.post("/auth/authorize/patient", data={"csrf_token": token, "action": "continue", "patient": theirs})
    assert bad.status_code == 400
    r = web.post("/auth/authorize/patient", data={"csrf_token": token, "action": "continue", "patient": mine[0]})
    assert r.status_code == 303
    r = web.get(r.headers["Location"])
    q = query_of(r.headers["Location"])
    body = exchange(web, console, q["code"], verifier).json
    assert body["patient"] == mine[0]
    assert verify_access_token(body["access_token"], settings)["patient"] == mine[0]


def test_staff_sees_the_patients_of_their_providers_and_can_cancel(app, db_session, settings) -> None:
    doc, _, mine, _theirs = _practice(db_session, settings)
    staff = make_user(db_session, settings, role="staff", staff_of=(f"Practitioner/{doc}",), prefix="staff")
    console = make_client(db_session)
    web = new_web_client(app)
    _start(web, settings, console, "launch/patient user/Patient.rs", staff.username)
    page = web.get("/auth/authorize/patient")
    listed = re.findall(r'name="patient" id="[^"]+" value="([^"]+)"', page.data.decode())
    assert sorted(listed) == sorted(mine)
    r = web.post("/auth/authorize/patient", data={"csrf_token": csrf_from(page.data), "action": "cancel"})
    q = query_of(r.headers["Location"])
    assert q["error"] == "access_denied" and "code" not in q


def test_provider_without_patient_scopes_gets_no_picker(app, db_session, settings) -> None:
    doc, _, _, _ = _practice(db_session, settings)
    provider = make_user(db_session, settings, role="provider", fhir_user=f"Practitioner/{doc}")
    console = make_client(db_session)
    web = new_web_client(app)
    r, verifier = _start(web, settings, console, "user/Patient.rs openid fhirUser", provider.username)
    q = query_of(r.headers["Location"])
    body = exchange(web, console, q["code"], verifier).json
    assert "patient" not in body and body["scope"] == "user/Patient.rs openid fhirUser"


def test_patient_never_sees_the_picker(app, db_session, settings) -> None:
    patient = make_user(db_session, settings)
    first = make_client(db_session)
    web = new_web_client(app)
    _start(web, settings, first, "launch/patient patient/*.rs", patient.username)
    r = web.get("/auth/authorize/patient")
    assert r.status_code in (302, 303, 400)
    assert b'name="patient"' not in r.data

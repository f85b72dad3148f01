"""The review's defects seen through the FHIR API, and the checklist items they complete.

Defect 1 (portal access), 5 (401 before format checks), 8 (scopes of operations) and 12
(existence oracles), plus C1 and C11, each over HTTP with real tokens of real grants.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from fhirserver.extensions import db
from fhirserver.models import AuditLogRow, OutboxRow, ResourceRow
from smart_auth import accounts
from smart_auth.models import OAuthGrant
from tests.auth.support import login, new_web_client
from tests.factories import PROVIDER_SCOPE, make_patient, make_practice, message_json, patient_json, token_for

FHIR = "application/fhir+json"


def _h(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def _outcome(resp: Any) -> dict[str, Any]:
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return dict(body)


# -- C1, C11, defect 5 -----------------------------------------------------------------------------


def test_C1_no_token_is_exactly_401_with_a_bearer_challenge(client, practice) -> None:
    for method, path in (
        ("GET", f"/fhir/{practice.patient_ref}"),
        ("GET", "/fhir/Patient"),
        ("POST", "/fhir/Communication"),
        ("GET", "/fhir/Communication/$unread-count"),
    ):
        resp = client.open(path, method=method)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        _outcome(resp)


def test_C11_a_token_for_another_audience_is_refused(app, settings, practice) -> None:
    from smart_auth.grants import issue_token

    elsewhere = settings.with_(base_url="https://other.example")
    with app.app_context():
        user = accounts.get_user(db.session, practice.provider_user_id)
        token = issue_token(db.session, elsewhere, user=user, client_id="tests", scope=PROVIDER_SCOPE)
        db.session.commit()
        db.session.remove()
    resp = app.test_client().get(f"/fhir/{practice.patient_ref}", headers=_h(token))
    assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Accept": "application/fhir+xml"}, ""),
        ({}, "?_format=xml"),
        ({"Content-Type": "text/plain"}, ""),
        ({"Content-Type": "application/fhir+json; charset=latin-1"}, ""),
    ],
)
def test_defect5_without_a_valid_token_401_comes_before_format_checks(client, headers, query) -> None:
    for auth in ({}, {"Authorization": "Bearer not-a-token"}):
        resp = client.post(f"/fhir/Patient{query}", data=b'{"resourceType":"Patient"}', headers={**headers, **auth})
        assert resp.status_code == 401, resp.status_code
        _outcome(resp)


# -- defect 8: operations need the right permission -------------------------------------------------


def test_defect8_state_changing_operations_need_update_permission(app, client, settings, practice) -> None:
    patient_rs = token_for(
        app,
        settings,
        practice.patient_user_id,
        "launch/patient patient/Patient.rs patient/Practitioner.rs patient/Communication.rs",
        patient=practice.patient_id,
    )
    full = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    msg = message_json(practice.practitioner_ref, practice.patient_ref, practice.patient_ref)
    cid = client.post("/fhir/Communication", data=json.dumps(msg), headers=_h(full, **{"Content-Type": FHIR}))
    cid = cid.get_json(force=True)["id"]
    for op in ("$mark-read", "$mark-unread"):
        resp = client.post(f"/fhir/Communication/{cid}/{op}", headers=_h(patient_rs))
        assert resp.status_code == 403, (op, resp.status_code)  # the skeleton let a read-only token write
    assert client.get("/fhir/Communication/$unread-count", headers=_h(patient_rs)).status_code == 200
    create_only = token_for(
        app, settings, practice.patient_user_id, "launch/patient patient/Communication.c", patient=practice.patient_id
    )
    assert client.get("/fhir/Communication/$unread-count", headers=_h(create_only)).status_code == 403
    provider_rs = token_for(app, settings, practice.provider_user_id, "user/Patient.rs user/Communication.rs")
    for op in ("$grant-portal-access", "$reset-portal-password"):
        resp = client.post(f"/fhir/{practice.patient_ref}/{op}", headers=_h(provider_rs))
        assert resp.status_code == 403, (op, resp.status_code)
    assert client.get(f"/fhir/Communication/{cid}/$mark-read", headers=_h(full)).status_code == 405


def test_defect8_the_capability_statement_states_each_operation_scope(client) -> None:
    cs = client.get("/fhir/metadata").get_json(force=True)
    ops = {
        (r["type"], o["name"]): o["documentation"] for r in cs["rest"][0]["resource"] for o in r.get("operation", [])
    }
    assert "update ('u') on Communication" in ops[("Communication", "mark-read")]
    assert "read ('r') on Communication" in ops[("Communication", "unread-count")]
    assert "update ('u') on Patient" in ops[("Patient", "grant-portal-access")]
    assert "update ('u') on Patient" in ops[("Patient", "reset-portal-password")]


# -- defect 12: existence oracles -------------------------------------------------------------------


def test_defect12_put_to_an_unseen_id_is_404_whether_it_exists_or_not(app, client, settings, practice) -> None:
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    token = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    answers = []
    for pid in (other.patient_id, "never-existed-1"):
        body = patient_json([practice.practitioner_ref], id=pid)
        resp = client.put(f"/fhir/Patient/{pid}", data=json.dumps(body), headers=_h(token, **{"Content-Type": FHIR}))
        answers.append((resp.status_code, _outcome(resp)["issue"][0]["code"]))
    assert answers == [(404, "not-found"), (404, "not-found")]  # the skeleton created the second (201)
    with app.app_context():
        assert db.session.get(ResourceRow, ("Patient", "never-existed-1")) is None
        db.session.remove()
    # A conditional PUT says nothing either.
    body = patient_json([practice.practitioner_ref], id="never-existed-2")
    resp = client.put(
        "/fhir/Patient/never-existed-2",
        data=json.dumps(body),
        headers=_h(token, **{"Content-Type": FHIR, "If-Match": 'W/"1"'}),
    )
    assert resp.status_code == 404


def test_defect12_sending_to_another_providers_patient_looks_like_an_unknown_patient(
    app, client, settings, practice
) -> None:
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    token = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    answers = []
    for target in (other.patient_ref, "Patient/never-existed-3"):
        msg = message_json(practice.practitioner_ref, target)
        resp = client.post("/fhir/Communication", data=json.dumps(msg), headers=_h(token, **{"Content-Type": FHIR}))
        answers.append((resp.status_code, _outcome(resp)))
    assert answers[0] == answers[1] and answers[0][0] == 422


# -- defect 1: portal access cannot be taken over ---------------------------------------------------


def test_defect1_granting_again_is_refused_and_the_patients_password_keeps_working(
    app, client, settings, practice
) -> None:
    token = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    resp = client.post(f"/fhir/{practice.patient_ref}/$grant-portal-access", headers=_h(token))
    assert resp.status_code == 409
    assert "active portal account" in _outcome(resp)["issue"][0]["diagnostics"]
    web = new_web_client(app)
    assert login(web, practice.patient_username, practice.password).status_code == 303


def test_defect1_reset_ends_sessions_and_tokens_and_emails_a_notice(app, client, settings, practice) -> None:
    provider = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    patient_token = token_for(
        app, settings, practice.patient_user_id, "launch/patient patient/Patient.rs", patient=practice.patient_id
    )
    browser = new_web_client(app)
    assert login(browser, practice.patient_username, practice.password).status_code == 303
    assert client.get(f"/fhir/{practice.patient_ref}", headers=_h(patient_token)).status_code == 200
    resp = client.post(f"/fhir/{practice.patient_ref}/$reset-portal-password", headers=_h(provider))
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    params = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in resp.get_json(force=True)["parameter"]
    }
    assert params["username"] == practice.patient_username and params["password"] != practice.password
    assert client.get(f"/fhir/{practice.patient_ref}", headers=_h(patient_token)).status_code == 401
    assert browser.get("/auth/").status_code == 302  # signed out everywhere
    assert login(new_web_client(app), practice.patient_username, practice.password).status_code == 400
    assert login(new_web_client(app), practice.patient_username, params["password"]).status_code == 303
    with app.app_context():
        rows = (
            db.session.execute(
                select(OutboxRow).where(
                    OutboxRow.recipient_ref == practice.patient_ref, OutboxRow.kind == "password-reset"
                )
            )
            .scalars()
            .all()
        )
        assert len(rows) == 1 and rows[0].status == "pending"
        audit = db.session.scalars(select(AuditLogRow).where(AuditLogRow.event_id == rows[0].subject_id)).first()
        assert audit is not None and b"portal-password-reset" in audit.content
        assert params["password"].encode() not in audit.content
        grants = db.session.execute(select(OAuthGrant).where(OAuthGrant.user_id == practice.patient_user_id))
        assert {g.revoke_reason for g in grants.scalars()} == {"password-reset"}
        db.session.remove()


def test_defect1_reset_of_a_patient_without_an_account_is_409(app, client, settings, practice) -> None:
    with app.app_context():
        pid = make_patient(db.session, settings, practice.practitioner_ref)
        db.session.remove()
    token = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    resp = client.post(f"/fhir/Patient/{pid}/$reset-portal-password", headers=_h(token))
    assert resp.status_code == 409 and "no portal account" in _outcome(resp)["issue"][0]["diagnostics"]
    assert client.post(f"/fhir/Patient/{pid}/$reset-portal-password", data=b"x", headers=_h(token)).status_code == 400


# -- C3: each scope letter alone --------------------------------------------------------------------


@pytest.mark.parametrize("letter", list("cruds"))
def test_C3_each_scope_letter_alone_allows_its_interaction_only(app, client, settings, practice, letter) -> None:
    token = token_for(app, settings, practice.provider_user_id, f"user/Patient.{letter}")
    with app.app_context():
        victims = [make_patient(db.session, settings, practice.practitioner_ref) for _ in range(2)]
        db.session.remove()
    body = patient_json([practice.practitioner_ref])
    current = patient_json([practice.practitioner_ref], id=victims[0])
    json_h = _h(token, **{"Content-Type": FHIR})
    answers = {
        "c": client.post("/fhir/Patient", data=json.dumps(body), headers=json_h).status_code,
        "r": client.get(f"/fhir/Patient/{victims[0]}", headers=_h(token)).status_code,
        "u": client.put(f"/fhir/Patient/{victims[0]}", data=json.dumps(current), headers=json_h).status_code,
        "d": client.delete(f"/fhir/Patient/{victims[1]}", headers=_h(token)).status_code,
        "s": client.get(f"/fhir/Patient?_id={victims[0]}", headers=_h(token)).status_code,
    }
    allowed = {k for k, status in answers.items() if status < 300}
    assert allowed == {letter}, answers
    assert all(status == 403 for k, status in answers.items() if k != letter), answers


# -- defect 5 inside Flask: routing errors are OperationOutcomes too --------------------------------


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "CONNECT", "MKCOL", "LOCK"])
def test_defect5_unknown_methods_get_a_405_operation_outcome(client, method) -> None:
    resp = client.open("/fhir/Patient/x", method=method)
    assert resp.status_code == 405 and resp.headers["Allow"]
    assert _outcome(resp)["issue"][0]["code"] == "not-supported"
    assert resp.headers["Content-Type"].startswith("application/fhir+json")


def test_defect5_ids_with_line_breaks_reach_the_fhir_error_path(app, client, settings, practice) -> None:
    token = token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)
    for path in ("/fhir/Patient/a%0d%0ab", "/fhir/Patient/a%0ab/_history", "/fhir/%0aPatient"):
        assert client.get(path).status_code == 401  # no token: 401 first, whatever the path
        resp = client.get(path, headers=_h(token))
        assert resp.status_code in (400, 404), (path, resp.status_code)
        _outcome(resp)
        assert "\\n" not in resp.get_data(as_text=True)  # the id is not echoed, escaped or not

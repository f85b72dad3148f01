"""The /fhir REST API over HTTP (Flask test client), with real signed access tokens."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from fhirserver.extensions import db
from fhirserver.models import AuditLogRow, ResourceRow
from tests.factories import PROVIDER_SCOPE, make_practice, message_json, patient_json, token_for
from tests.support import uid

FHIR = "application/fhir+json"


def outcome(resp) -> dict:
    data = resp.get_json(force=True)
    assert data["resourceType"] == "OperationOutcome", data
    return data


def test_metadata_is_public_and_lists_smart_uris(client):
    resp = client.get("/fhir/metadata")
    assert resp.status_code == 200
    cs = resp.get_json(force=True)
    assert cs["fhirVersion"] == "4.0.1"
    ext = cs["rest"][0]["security"]["extension"][0]
    assert {e["url"] for e in ext["extension"]} == {"authorize", "token"}
    types = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert "delete" not in {i["code"] for i in types["Communication"]["interaction"]}
    assert "mark-read" in {o["name"] for o in types["Communication"]["operation"]}
    assert "recipient" in {s["name"] for s in types["Communication"]["searchParam"]}


def test_metadata_is_a_valid_capability_statement_that_claims_only_what_works(client, provider_headers):
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    cs = client.get("/fhir/metadata").get_json(force=True)
    CapabilityStatement.model_validate(cs)
    # CORS is claimed exactly when the API answers a cross-origin request with CORS headers.
    origin = {"Origin": "https://app.example"}
    read = client.get("/fhir/metadata", headers={**provider_headers, **origin})
    assert cs["rest"][0]["security"]["cors"] is ("Access-Control-Allow-Origin" in read.headers)


def test_no_token_is_401_with_challenge(client, practice):
    resp = client.get(f"/fhir/Patient/{practice.patient_id}")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    outcome(resp)
    resp = client.get(f"/fhir/Patient/{practice.patient_id}", headers={"Authorization": "Bearer not.a.jwt"})
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_crud_over_http(client, provider_headers, practice):
    body = patient_json([practice.practitioner_ref])
    resp = client.post("/fhir/Patient", data=json.dumps(body), headers={**provider_headers, "Content-Type": FHIR})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.headers["ETag"] == 'W/"1"'
    loc = resp.headers["Location"]
    pid = resp.get_json(force=True)["id"]
    assert loc.endswith(f"/Patient/{pid}/_history/1")
    assert resp.headers["Cache-Control"] == "no-store"

    got = client.get(f"/fhir/Patient/{pid}", headers=provider_headers)
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("application/fhir+json")
    data = got.get_json(force=True)
    data["birthDate"] = "1981-01-01"
    stale = client.put(
        f"/fhir/Patient/{pid}",
        data=json.dumps(data),
        headers={**provider_headers, "Content-Type": FHIR, "If-Match": 'W/"9"'},
    )
    assert stale.status_code == 412
    ok = client.put(
        f"/fhir/Patient/{pid}",
        data=json.dumps(data),
        headers={**provider_headers, "Content-Type": FHIR, "If-Match": 'W/"1"'},
    )
    assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"2"'
    hist = client.get(f"/fhir/Patient/{pid}/_history", headers=provider_headers).get_json(force=True)
    assert hist["type"] == "history" and hist["total"] == 2
    assert client.get(f"/fhir/Patient/{pid}/_history/1", headers=provider_headers).status_code == 200
    assert client.delete(f"/fhir/Patient/{pid}", headers=provider_headers).status_code == 204
    assert client.get(f"/fhir/Patient/{pid}", headers=provider_headers).status_code == 410


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{not json", 400),
        (b"[1,2]", 400),
        (json.dumps({"resourceType": "Patient", "bogus": True}).encode(), 400),
        (json.dumps({"resourceType": "Practitioner"}).encode(), 400),
        (json.dumps({"resourceType": "Patient", "birthDate": "yesterday"}).encode(), 400),
    ],
)
def test_bad_input_is_an_operation_outcome_and_writes_nothing(app, client, provider_headers, body, status):
    with app.app_context():
        before = db.session.execute(select(ResourceRow.res_id)).all()
    resp = client.post("/fhir/Patient", data=body, headers={**provider_headers, "Content-Type": FHIR})
    assert resp.status_code == status
    assert outcome(resp)["issue"][0]["diagnostics"]
    with app.app_context():
        after = db.session.execute(select(ResourceRow.res_id).where(ResourceRow.res_type != "AuditEvent")).all()
        assert len(after) <= len(before)


def test_validation_error_names_the_element(client, provider_headers):
    resp = client.post(
        "/fhir/Patient",
        data=json.dumps({"resourceType": "Patient", "birthDate": "x"}),
        headers={**provider_headers, "Content-Type": FHIR},
    )
    assert resp.status_code == 400
    assert outcome(resp)["issue"][0]["expression"] == ["Patient.birthDate"]


def test_unknown_type_wrong_id_and_oversized_body(client, provider_headers, settings):
    assert client.get("/fhir/Observation/1", headers=provider_headers).status_code == 404
    assert client.get("/fhir/Patient/bad$id!", headers=provider_headers).status_code in (400, 404)
    assert client.get("/fhir/Patient/" + "a" * 65, headers=provider_headers).status_code == 400
    big = b'{"resourceType":"Patient","text":"' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    resp = client.post("/fhir/Patient", data=big, headers={**provider_headers, "Content-Type": FHIR})
    assert resp.status_code == 413
    outcome(resp)
    resp = client.post(
        "/fhir/Patient", data=b"<Patient/>", headers={**provider_headers, "Content-Type": "application/fhir+xml"}
    )
    assert resp.status_code == 415


def test_outside_grant_is_404_and_ungranted_type_403(app, client, settings, practice, provider_headers):
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    assert client.get(f"/fhir/Patient/{other.patient_id}", headers=provider_headers).status_code == 404
    tok = token_for(app, settings, practice.provider_user_id, "user/Patient.rs")
    resp = client.get("/fhir/Communication", headers={"Authorization": f"Bearer {tok}"})
    assert resp.status_code == 403


def test_webmail_over_http_with_read_state(client, practice, provider_headers, patient_headers):
    msg = message_json(practice.patient_ref, practice.practitioner_ref, topic="Question")
    resp = client.post("/fhir/Communication", data=json.dumps(msg), headers={**patient_headers, "Content-Type": FHIR})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    cid = resp.get_json(force=True)["id"]

    count = client.get("/fhir/Communication/$unread-count", headers=provider_headers).get_json(force=True)
    assert count["parameter"][0] == {"name": "count", "valueInteger": 1}

    search = client.post(
        "/fhir/Communication/_search",
        data={"recipient": practice.practitioner_ref, "_sort": "-sent"},
        headers=provider_headers,
    )
    assert search.status_code == 200, search.get_data(as_text=True)
    bundle = search.get_json(force=True)
    entry = next(e for e in bundle["entry"] if e["resource"]["id"] == cid)
    state = {x["url"]: x["valueBoolean"] for x in entry["extension"][0]["extension"]}
    assert state == {"readByMe": False, "readByRecipient": False}

    # A GET never writes: reading does not mark read.
    assert client.get(f"/fhir/Communication/{cid}", headers=provider_headers).status_code == 200
    count = client.get("/fhir/Communication/$unread-count", headers=provider_headers).get_json(force=True)
    assert count["parameter"][0]["valueInteger"] == 1
    assert client.get(f"/fhir/Communication/{cid}/$mark-read", headers=provider_headers).status_code == 405
    assert client.post(f"/fhir/Communication/{cid}/$mark-read", headers=provider_headers).status_code == 200
    count = client.get("/fhir/Communication/$unread-count", headers=provider_headers).get_json(force=True)
    assert count["parameter"][0]["valueInteger"] == 0

    sent = client.post(
        "/fhir/Communication/_search", data={"sender": practice.patient_ref}, headers=patient_headers
    ).get_json(force=True)
    entry = next(e for e in sent["entry"] if e["resource"]["id"] == cid)
    state = {x["url"]: x["valueBoolean"] for x in entry["extension"][0]["extension"]}
    assert state["readByRecipient"] is True


def test_forged_sender_over_http_is_403(app, client, settings, practice, patient_headers):
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    msg = message_json(other.patient_ref, other.practitioner_ref)
    resp = client.post("/fhir/Communication", data=json.dumps(msg), headers={**patient_headers, "Content-Type": FHIR})
    assert resp.status_code == 403
    outcome(resp)


def test_search_paging_uses_opaque_cursor(client, practice, patient_headers):
    for i in range(3):
        msg = message_json(practice.patient_ref, practice.practitioner_ref, topic=f"Page {i}")
        assert (
            client.post(
                "/fhir/Communication", data=json.dumps(msg), headers={**patient_headers, "Content-Type": FHIR}
            ).status_code
            == 201
        )
    first = client.post(
        "/fhir/Communication/_search",
        data={"sender": practice.patient_ref, "_count": "2", "_sort": "-sent"},
        headers=patient_headers,
    ).get_json(force=True)
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert practice.patient_id not in nxt and "sender" not in nxt
    path = nxt.split("/fhir", 1)[1]
    second = client.get("/fhir" + path, headers=patient_headers).get_json(force=True)
    ids = [e["resource"]["id"] for e in first["entry"]] + [e["resource"]["id"] for e in second["entry"]]
    assert len(ids) == len(set(ids)) == 3


def test_grant_portal_access_over_http(app, client, settings, practice, provider_headers):
    body = patient_json([practice.practitioner_ref], given="Mara")
    pid = client.post(
        "/fhir/Patient", data=json.dumps(body), headers={**provider_headers, "Content-Type": FHIR}
    ).get_json(force=True)["id"]
    resp = client.post(f"/fhir/Patient/{pid}/$grant-portal-access", headers=provider_headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    params = {p["name"]: p for p in resp.get_json(force=True)["parameter"]}
    assert params["username"]["valueString"].startswith("mara")
    assert len(params["password"]["valueString"]) >= 8
    assert resp.headers["Cache-Control"] == "no-store"

    bare = patient_json([practice.practitioner_ref], email=False)
    bare.pop("address")
    pid2 = client.post(
        "/fhir/Patient", data=json.dumps(bare), headers={**provider_headers, "Content-Type": FHIR}
    ).get_json(force=True)["id"]
    resp = client.post(f"/fhir/Patient/{pid2}/$grant-portal-access", headers=provider_headers)
    assert resp.status_code == 422
    text = " ".join(i["diagnostics"] for i in outcome(resp)["issue"])
    assert "email" in text and "address" in text
    assert (
        client.post(f"/fhir/Patient/{pid2}/$grant-portal-access", data=b"junk", headers=provider_headers).status_code
        == 400
    )


def test_audit_events_written_and_only_auditor_reads(app, client, settings, practice, provider_headers):
    from smart_auth import accounts

    assert client.get(f"/fhir/Patient/{practice.patient_id}", headers=provider_headers).status_code == 200
    assert client.get("/fhir/AuditEvent", headers=provider_headers).status_code == 403
    with app.app_context():
        auditor = accounts.create_user(
            db.session, username=f"aud{uid()}", password="correct horse battery", role="auditor"
        )
        db.session.commit()
        auditor_id = auditor.id
    tok = token_for(app, settings, auditor_id, "user/AuditEvent.rs")
    resp = client.get(
        "/fhir/AuditEvent?patient=" + practice.patient_ref + "&_count=50", headers={"Authorization": f"Bearer {tok}"}
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    events = [e["resource"] for e in resp.get_json(force=True)["entry"]]
    reads = [e for e in events if e["subtype"][0]["code"] == "read"]
    assert reads and reads[0]["outcome"] == "0"
    assert (
        client.post(
            "/fhir/AuditEvent",
            data=json.dumps({"resourceType": "AuditEvent"}),
            headers={"Authorization": f"Bearer {tok}", "Content-Type": FHIR},
        ).status_code
        == 405
    )


def test_phi_interactions_write_valid_balp_audit_events(app, client, practice, provider_headers, patient_headers):
    from fhir.resources.R4B.auditevent import AuditEvent

    def call(method: str, path: str, headers: dict, **kw) -> str:
        rid = f"audit-{uid()}"
        resp = client.open(path, method=method, headers={**headers, "X-Request-Id": rid}, **kw)
        assert resp.status_code < 300, resp.get_data(as_text=True)
        return rid

    msg = json.dumps(message_json(practice.patient_ref, practice.practitioner_ref))
    created = client.post("/fhir/Communication", data=msg, headers={**patient_headers, "Content-Type": FHIR})
    cid = created.get_json(force=True)["id"]
    expected = {  # request id -> (subtype, action, the patient the event must name)
        call("GET", f"/fhir/Communication/{cid}", provider_headers): ("read", "R", practice.patient_ref),
        call("POST", f"/fhir/Communication/{cid}/$mark-read", provider_headers): (
            "operation",
            "E",
            practice.patient_ref,
        ),
        call("POST", "/fhir/Communication/_search", patient_headers, data={"sender": practice.patient_ref}): (
            "search-type",
            "E",
            practice.patient_ref,
        ),
        call("GET", f"/fhir/Patient/{practice.patient_id}/_history", provider_headers): (
            "history-instance",
            "R",
            practice.patient_ref,
        ),
    }
    with app.app_context():
        events = [json.loads(c) for c in db.session.execute(select(AuditLogRow.content)).scalars()]
    for rid, (subtype, action, patient) in expected.items():
        (event,) = [e for e in events if rid in json.dumps(e)]
        AuditEvent.model_validate(event)
        assert event["type"]["code"] == "rest" and event["subtype"][0]["code"] == subtype, rid
        assert event["action"] == action and event["outcome"] == "0"
        assert next(a for a in event["agent"] if a["requestor"])["who"]["reference"].startswith(
            ("Patient/", "Practitioner/")
        )
        patients = [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]
        assert patients == [patient], (subtype, event["entity"])


def test_staff_unread_count_clears_when_they_read_without_a_read_receipt(
    app, client, settings, practice, patient_headers
):
    from smart_auth import accounts

    with app.app_context():
        staff = accounts.create_user(
            db.session,
            username=f"staff{uid()}",
            password="correct horse battery staple",
            role="staff",
            staff_of=[practice.practitioner_ref],
            settings=settings,
        )
        db.session.commit()
        staff_id = staff.id
    headers = {"Authorization": "Bearer " + token_for(app, settings, staff_id, PROVIDER_SCOPE)}
    msg = message_json(practice.patient_ref, practice.practitioner_ref)
    cid = client.post(
        "/fhir/Communication", data=json.dumps(msg), headers={**patient_headers, "Content-Type": FHIR}
    ).get_json(force=True)["id"]
    count = client.get("/fhir/Communication/$unread-count", headers=headers).get_json(force=True)
    assert count["parameter"][0]["valueInteger"] == 1
    assert client.post(f"/fhir/Communication/{cid}/$mark-read", headers=headers).status_code == 200
    count = client.get("/fhir/Communication/$unread-count", headers=headers).get_json(force=True)
    assert count["parameter"][0]["valueInteger"] == 0
    sent = client.post(
        "/fhir/Communication/_search", data={"sender": practice.patient_ref}, headers=patient_headers
    ).get_json(force=True)
    entry = next(e for e in sent["entry"] if e["resource"]["id"] == cid)
    state = {x["url"]: x["valueBoolean"] for x in entry["extension"][0]["extension"]}
    assert state["readByRecipient"] is False

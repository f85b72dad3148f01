"""PATCH with JSON Patch (RFC 6902): applied to the current version, then stored as an update would
be (validated, the write rules, If-Match), with a clear OperationOutcome for every bad patch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fhirserver.extensions import db
from fhirserver.models import ResourceRow
from tests.factories import make_practice, message_json, patient_json
from tests.fhir.test_api import FHIR, outcome

PATCH = "application/json-patch+json"


@pytest.fixture()
def pid(client, auth, practice) -> str:
    body = patient_json([practice.practitioner_ref], family="Before")
    resp = client.post("/fhir/Patient", data=json.dumps(body), headers={**auth, "Content-Type": FHIR})
    assert resp.status_code == 201
    return resp.get_json(force=True)["id"]


def _patch(client: Any, auth: dict[str, str], path: str, ops: Any, **headers: str) -> Any:
    body = ops if isinstance(ops, bytes | str) else json.dumps(ops)
    return client.patch(path, data=body, headers={**auth, "Content-Type": PATCH, **headers})


def _version(app: Any, pid: str) -> int:
    with app.app_context():
        row = db.session.get(ResourceRow, ("Patient", pid))
        assert row is not None
        version = row.version_id
        db.session.remove()
        return version


def test_a_patch_changes_the_resource_and_makes_a_new_version(client, auth, pid) -> None:
    ops = [
        {"op": "test", "path": "/name/0/family", "value": "Before"},
        {"op": "replace", "path": "/name/0/family", "value": "After"},
        {"op": "add", "path": "/birthDate", "value": "1980-02-03"},
    ]
    resp = _patch(client, auth, f"/fhir/Patient/{pid}", ops, **{"If-Match": 'W/"1"'})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["ETag"] == 'W/"2"'
    data = resp.get_json(force=True)
    assert data["name"][0]["family"] == "After" and data["birthDate"] == "1980-02-03"
    assert data["meta"]["versionId"] == "2"
    read = client.get(f"/fhir/Patient/{pid}", headers=auth).get_json(force=True)
    assert read["name"][0]["family"] == "After"
    hist = client.get(f"/fhir/Patient/{pid}/_history", headers=auth).get_json(force=True)
    assert hist["total"] == 2


def test_if_match_of_another_version_is_412_and_changes_nothing(app, client, auth, pid) -> None:
    ops = [{"op": "replace", "path": "/name/0/family", "value": "Late"}]
    resp = _patch(client, auth, f"/fhir/Patient/{pid}", ops, **{"If-Match": 'W/"7"'})
    assert resp.status_code == 412
    outcome(resp)
    assert _version(app, pid) == 1


@pytest.mark.parametrize(
    "ops,status,says",
    [
        (b"{not json", 400, "not valid JSON"),
        ({"op": "add"}, 400, "array"),
        ([{"op": "frobnicate", "path": "/x"}], 400, "Malformed"),
        ([{"op": "add", "path": "/x"}], 400, "value"),
        ([{"op": "replace", "value": 1}], 400, "Malformed"),
        ([{"op": "add", "path": "no-slash", "value": 1}], 400, "Malformed"),
        ([{"op": "test", "path": "/name/0/family", "value": "Wrong"}], 422, "test"),
        ([{"op": "remove", "path": "/telecom/99"}], 422, "does not apply"),
        ([{"op": "replace", "path": "/id", "value": "other"}], 422, "id"),
        ([{"op": "replace", "path": "/resourceType", "value": "Practitioner"}], 422, "resourceType"),
        ([{"op": "add", "path": "/birthDate", "value": "yesterday"}], 400, "birthDate"),  # invalid result
        ([{"op": "add", "path": "/bogus", "value": True}], 400, "bogus"),
        ([{"op": "add", "path": "/gender", "value": None}], 400, "null"),
        ([{"op": "remove", "path": "/generalPractitioner"}], 403, ""),  # out of the provider's own reach
    ],
)
def test_bad_patches_get_an_operation_outcome_and_write_nothing(app, client, auth, pid, ops, status, says) -> None:
    resp = _patch(client, auth, f"/fhir/Patient/{pid}", ops)
    assert resp.status_code == status, resp.get_data(as_text=True)
    text = json.dumps(outcome(resp))
    assert says in text
    assert _version(app, pid) == 1


def test_a_failed_patch_names_the_operation_never_the_stored_values(client, auth, pid) -> None:
    """The stored family name is PHI: a failed ``test`` or a missing path must not quote the record."""
    for ops in (
        [{"op": "add", "path": "/gender", "value": "male"}, {"op": "test", "path": "/name/0/family", "value": "X"}],
        [{"op": "remove", "path": "/name/0/nickname"}],
    ):
        resp = _patch(client, auth, f"/fhir/Patient/{pid}", ops)
        assert resp.status_code == 422
        text = json.dumps(outcome(resp))
        assert "Before" not in text and "Lena" not in text and "operation" in text
    assert "operation 2, test at /name/0/family" in json.dumps(
        outcome(
            _patch(
                client,
                auth,
                f"/fhir/Patient/{pid}",
                [
                    {"op": "add", "path": "/gender", "value": "male"},
                    {"op": "test", "path": "/name/0/family", "value": "X"},
                ],
            )
        )
    )


def test_a_patch_must_be_sent_as_json_patch(client, auth, pid) -> None:
    ops = json.dumps([{"op": "add", "path": "/birthDate", "value": "1980-02-03"}])
    for ctype in (FHIR, "application/json", "text/plain"):
        resp = client.patch(f"/fhir/Patient/{pid}", data=ops, headers={**auth, "Content-Type": ctype})
        assert resp.status_code == 415, ctype
        assert "json-patch+json" in json.dumps(outcome(resp))


def test_outside_the_grant_or_gone_a_patch_is_404_or_410(app, client, settings, auth, pid) -> None:
    ops = [{"op": "add", "path": "/birthDate", "value": "1980-02-03"}]
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    assert _patch(client, auth, f"/fhir/Patient/{other.patient_id}", ops).status_code == 404
    assert _patch(client, auth, "/fhir/Patient/does-not-exist", ops).status_code == 404
    assert client.delete(f"/fhir/Patient/{pid}", headers=auth).status_code == 204
    assert _patch(client, auth, f"/fhir/Patient/{pid}", ops).status_code == 410


def test_a_sent_message_and_audit_events_cannot_be_patched(client, auth, practice) -> None:
    sent = client.post(
        "/fhir/Communication",
        data=json.dumps(message_json(practice.practitioner_ref, practice.patient_ref)),
        headers={**auth, "Content-Type": FHIR},
    )
    assert sent.status_code == 201
    cid = sent.get_json(force=True)["id"]
    ops = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    assert _patch(client, auth, f"/fhir/Communication/{cid}", ops).status_code == 405
    assert _patch(client, auth, "/fhir/AuditEvent/x", ops).status_code == 405


def test_a_patch_is_audited_as_an_update(app, client, auth, pid) -> None:
    from sqlalchemy import select

    from fhirserver.models import AuditLogRow

    ops = [{"op": "add", "path": "/birthDate", "value": "1980-02-03"}]
    assert _patch(client, auth, f"/fhir/Patient/{pid}", ops).status_code == 200
    with app.app_context():
        rows = db.session.execute(select(AuditLogRow).where(AuditLogRow.entity_ref == f"Patient/{pid}")).scalars()
        actions = [r.action for r in rows]
        db.session.remove()
    assert "U" in actions


def test_the_capability_statement_lists_patch_where_update_works(client) -> None:
    meta = client.get("/fhir/metadata").get_json(force=True)
    codes = {r["type"]: {i["code"] for i in r["interaction"]} for r in meta["rest"][0]["resource"]}
    assert "patch" in codes["Patient"] and "update" in codes["Patient"]
    assert "patch" not in codes["Communication"] and "patch" not in codes["AuditEvent"]

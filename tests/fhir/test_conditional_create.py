"""Conditional create (``If-None-Exist``): no match creates, one match answers it, several are 412;
the criteria are strict, matched inside the caller's grant, and two identical requests at once
make one resource."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from fhirserver.extensions import db
from fhirserver.models import IdxToken
from tests.factories import PROVIDER_SCOPE, make_practice, patient_json, token_for
from tests.fhir.test_api import FHIR, outcome

MRN = "http://hospital.example/mrn"


def _body(practice: Any, mrn: str) -> str:
    return json.dumps(patient_json([practice.practitioner_ref], identifier=[{"system": MRN, "value": mrn}]))


def _post(client: Any, auth: dict[str, str], body: str, criteria: str | None) -> Any:
    headers = {**auth, "Content-Type": FHIR}
    if criteria is not None:
        headers["If-None-Exist"] = criteria
    return client.post("/fhir/Patient", data=body, headers=headers)


def _count(app: Any, mrn: str) -> int:
    with app.app_context():
        n = db.session.execute(
            select(func.count()).select_from(IdxToken).where(IdxToken.param == "identifier", IdxToken.code == mrn)
        ).scalar_one()
        db.session.remove()
        return int(n)


def test_no_match_creates_and_one_match_answers_it(app, client, auth, practice) -> None:
    mrn = uuid.uuid4().hex
    first = _post(client, auth, _body(practice, mrn), f"identifier={MRN}|{mrn}")
    assert first.status_code == 201
    pid = first.get_json(force=True)["id"]
    again = _post(client, auth, _body(practice, mrn), f"identifier={MRN}|{mrn}")
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json(force=True)["id"] == pid and again.headers["ETag"] == 'W/"1"'
    assert _count(app, mrn) == 1


def test_several_matches_are_412_and_create_nothing(app, client, auth, practice) -> None:
    mrn = uuid.uuid4().hex
    for _ in range(2):
        assert _post(client, auth, _body(practice, mrn), None).status_code == 201
    resp = _post(client, auth, _body(practice, mrn), f"identifier={MRN}|{mrn}")
    assert resp.status_code == 412
    outcome(resp)
    assert _count(app, mrn) == 2


def test_a_match_outside_the_grant_is_not_a_match(app, client, settings, auth, practice) -> None:
    """Another practice's patient with the same identifier: invisible here, so it is created, and the
    answer is the same as if the other record did not exist."""
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    theirs = {"Authorization": "Bearer " + token_for(app, settings, other.provider_user_id, PROVIDER_SCOPE)}
    mrn = uuid.uuid4().hex
    assert _post(client, theirs, _body(other, mrn), None).status_code == 201
    mine = _post(client, auth, _body(practice, mrn), f"identifier={MRN}|{mrn}")
    assert mine.status_code == 201
    assert _count(app, mrn) == 2


@pytest.mark.parametrize(
    "criteria,says",
    [
        ("", "names no search parameter"),
        ("identifier", "not a query string"),
        ("bogus=1", "bogus"),
        ("identifier:fuzzy=x", "fuzzy"),
        ("_count=1&identifier=x", "_count"),
        ("birthdate=yesterday", "birthdate"),
    ],
)
def test_criteria_are_strict(app, client, auth, practice, criteria, says) -> None:
    mrn = uuid.uuid4().hex
    resp = _post(client, auth, _body(practice, mrn), criteria)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert says in json.dumps(outcome(resp))
    assert _count(app, mrn) == 0


def test_eight_identical_conditional_creates_at_once_make_one_resource(app, live_server, settings, practice) -> None:
    auth = {"Authorization": "Bearer " + token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)}
    mrn = uuid.uuid4().hex
    body = _body(practice, mrn)
    headers = {**auth, "Content-Type": FHIR, "If-None-Exist": f"identifier={MRN}|{mrn}"}

    def work(_: int) -> tuple[int, str]:
        resp = requests.post(f"{live_server.url}/fhir/Patient", data=body, headers=headers, timeout=30)
        return resp.status_code, resp.json().get("id", "")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    assert sorted(s for s, _ in results) == [200] * 7 + [201], results
    assert len({i for _, i in results}) == 1
    assert _count(app, mrn) == 1


# -- conditional update and delete ------------------------------------------------------------


def _put(client: Any, auth: dict[str, str], criteria: str, body: dict[str, Any], **headers: str) -> Any:
    return client.put(
        f"/fhir/Patient?{criteria}", data=json.dumps(body), headers={**auth, "Content-Type": FHIR, **headers}
    )


def test_conditional_update_creates_then_updates_the_one_match(app, client, auth, practice) -> None:
    mrn = uuid.uuid4().hex
    body = json.loads(_body(practice, mrn))
    made = _put(client, auth, f"identifier={MRN}|{mrn}", body)
    assert made.status_code == 201, made.get_data(as_text=True)
    pid = made.get_json(force=True)["id"]
    body["birthDate"] = "1971-07-07"
    updated = _put(client, auth, f"identifier={MRN}|{mrn}", body)
    assert updated.status_code == 200 and updated.headers["ETag"] == 'W/"2"'
    assert updated.get_json(force=True)["id"] == pid and updated.get_json(force=True)["birthDate"] == "1971-07-07"
    same_id = _put(client, auth, f"identifier={MRN}|{mrn}", {**body, "id": pid}, **{"If-Match": 'W/"2"'})
    assert same_id.status_code == 200 and same_id.headers["ETag"] == 'W/"3"'
    other_id = _put(client, auth, f"identifier={MRN}|{mrn}", {**body, "id": "someone-else"})
    assert other_id.status_code == 400 and "id" in json.dumps(outcome(other_id))
    stale = _put(client, auth, f"identifier={MRN}|{mrn}", body, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert _count(app, mrn) == 1


def test_conditional_update_with_several_matches_or_bad_criteria_changes_nothing(app, client, auth, practice) -> None:
    mrn = uuid.uuid4().hex
    for _ in range(2):
        assert _post(client, auth, _body(practice, mrn), None).status_code == 201
    body = json.loads(_body(practice, mrn))
    assert _put(client, auth, f"identifier={MRN}|{mrn}", body).status_code == 412
    assert _put(client, auth, "bogus=1", body).status_code == 400
    assert _put(client, auth, "_count=1", body).status_code == 400
    assert _put(client, auth, "_format=json", body).status_code == 400  # no criteria left
    assert _count(app, mrn) == 2


def _theirs(app: Any, client: Any, settings: Any, mrn: str) -> tuple[dict[str, str], str]:
    """Another practice's provider headers and a patient of theirs with identifier ``mrn``."""
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    theirs = {"Authorization": "Bearer " + token_for(app, settings, other.provider_user_id, PROVIDER_SCOPE)}
    return theirs, _post(client, theirs, _body(other, mrn), None).get_json(force=True)["id"]


def test_conditional_update_of_a_user_never_reaches_outside_the_grant(app, client, settings, auth, practice) -> None:
    mrn = uuid.uuid4().hex
    theirs, their_id = _theirs(app, client, settings, mrn)
    body = json.loads(_body(practice, mrn))
    mine = _put(client, auth, f"identifier={MRN}|{mrn}", body)  # their record is no match: a create
    assert mine.status_code == 201 and mine.get_json(force=True)["id"] != their_id
    assert _put(client, auth, "identifier=nobody-has-this", {**body, "id": their_id}).status_code == 404
    assert client.get(f"/fhir/Patient/{their_id}", headers=theirs).get_json(force=True)["meta"]["versionId"] == "1"


def test_conditional_delete_deletes_the_one_match_only(app, client, settings, auth, practice) -> None:
    mrn = uuid.uuid4().hex
    theirs, their_id = _theirs(app, client, settings, mrn)
    pid = _post(client, auth, _body(practice, mrn), None).get_json(force=True)["id"]
    assert client.delete(f"/fhir/Patient?identifier={MRN}|{mrn}", headers=auth).status_code == 204
    assert client.get(f"/fhir/Patient/{pid}", headers=auth).status_code == 410
    assert client.get(f"/fhir/Patient/{their_id}", headers=theirs).status_code == 200  # outside my grant
    assert client.delete(f"/fhir/Patient?identifier={MRN}|{mrn}", headers=auth).status_code == 204  # none left
    two = uuid.uuid4().hex
    for _ in range(2):
        _post(client, auth, _body(practice, two), None)
    assert client.delete(f"/fhir/Patient?identifier={MRN}|{two}", headers=auth).status_code == 412
    assert client.delete("/fhir/Patient?bogus=1", headers=auth).status_code == 400
    assert client.delete("/fhir/Patient", headers=auth).status_code == 400  # no criteria: never "all"
    assert _count(app, two) == 2


def test_sent_messages_and_audit_events_refuse_conditional_writes(client, auth, practice) -> None:
    assert client.delete(f"/fhir/Communication?subject={practice.patient_ref}", headers=auth).status_code == 405
    body = json.dumps({"resourceType": "AuditEvent"})
    put = client.put("/fhir/AuditEvent?date=gt2020-01-01", data=body, headers={**auth, "Content-Type": FHIR})
    assert put.status_code == 405


def test_the_capability_statement_declares_the_conditional_interactions(client) -> None:
    meta = client.get("/fhir/metadata").get_json(force=True)
    by_type = {r["type"]: r for r in meta["rest"][0]["resource"]}
    assert by_type["Patient"]["conditionalCreate"] and by_type["Patient"]["conditionalUpdate"]
    assert by_type["Patient"]["conditionalDelete"] == "single"
    assert by_type["Communication"]["conditionalDelete"] == "not-supported"
    assert not by_type["AuditEvent"]["conditionalCreate"]

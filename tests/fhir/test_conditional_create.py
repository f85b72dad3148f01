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


@pytest.fixture()
def practice(app, settings):
    with app.app_context():
        p = make_practice(db.session, settings)
        db.session.remove()
    return p


@pytest.fixture()
def auth(app, settings, practice) -> dict[str, str]:
    return {"Authorization": "Bearer " + token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)}


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

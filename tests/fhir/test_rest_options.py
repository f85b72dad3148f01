"""The REST options a FHIR client expects: ``If-None-Match`` on read (304), ``Prefer: return=`` on
writes, and ``_pretty``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fhirserver.extensions import db
from tests.factories import make_practice, patient_json
from tests.fhir.test_api import FHIR


def _create(client: Any, auth: dict[str, str], practice: Any, **headers: str) -> Any:
    body = json.dumps(patient_json([practice.practitioner_ref]))
    return client.post("/fhir/Patient", data=body, headers={**auth, "Content-Type": FHIR, **headers})


def test_if_none_match_of_the_current_version_is_304_without_a_body(client, auth, practice) -> None:
    pid = _create(client, auth, practice).get_json(force=True)["id"]
    for tag in ('W/"1"', '"1"', 'W/"7", W/"1"', "*"):
        resp = client.get(f"/fhir/Patient/{pid}", headers={**auth, "If-None-Match": tag})
        assert resp.status_code == 304, tag
        assert resp.get_data() == b"" and resp.headers["ETag"] == 'W/"1"' and resp.headers["Last-Modified"]
    changed = client.get(f"/fhir/Patient/{pid}", headers={**auth, "If-None-Match": 'W/"0"'})
    assert changed.status_code == 200 and changed.get_json(force=True)["id"] == pid


def test_if_none_match_reveals_nothing_outside_the_grant(app, client, settings, auth) -> None:
    with app.app_context():
        other = make_practice(db.session, settings)
        db.session.remove()
    resp = client.get(f"/fhir/Patient/{other.patient_id}", headers={**auth, "If-None-Match": "*"})
    assert resp.status_code == 404


@pytest.mark.parametrize("prefer", ["return=minimal", 'return="minimal"', "respond-async; return=minimal"])
def test_prefer_return_minimal_answers_with_headers_only(client, auth, practice, prefer) -> None:
    resp = _create(client, auth, practice, Prefer=prefer)
    assert resp.status_code == 201 and resp.get_data() == b""
    assert resp.headers["ETag"] == 'W/"1"' and "/Patient/" in resp.headers["Location"]


def test_prefer_return_operation_outcome_and_representation(client, auth, practice) -> None:
    made = _create(client, auth, practice, Prefer="return=OperationOutcome")
    assert made.status_code == 201
    oo = made.get_json(force=True)
    assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["severity"] == "information"
    pid = made.headers["Location"].split("/Patient/")[1].split("/")[0]
    data = client.get(f"/fhir/Patient/{pid}", headers=auth).get_json(force=True)
    data["birthDate"] = "1970-01-01"
    put = client.put(
        f"/fhir/Patient/{pid}",
        data=json.dumps(data),
        headers={**auth, "Content-Type": FHIR, "Prefer": "return=representation"},
    )
    assert put.status_code == 200 and put.get_json(force=True)["birthDate"] == "1970-01-01"
    ops = json.dumps([{"op": "add", "path": "/gender", "value": "female"}])
    patched = client.patch(
        f"/fhir/Patient/{pid}",
        data=ops,
        headers={**auth, "Content-Type": "application/json-patch+json", "Prefer": "return=minimal"},
    )
    assert patched.status_code == 200 and patched.get_data() == b"" and patched.headers["ETag"] == 'W/"3"'
    odd = _create(client, auth, practice, Prefer="return=everything")  # an unknown preference is ignored
    assert odd.status_code == 201 and odd.get_json(force=True)["resourceType"] == "Patient"


def test_pretty_indents_resources_bundles_and_errors(client, auth, practice) -> None:
    pid = _create(client, auth, practice).get_json(force=True)["id"]
    compact = client.get(f"/fhir/Patient/{pid}", headers=auth).get_data(as_text=True)
    assert "\n" not in compact
    for path in (f"/fhir/Patient/{pid}?_pretty=true", "/fhir/Patient?_pretty=true", "/fhir/Patient/x%20y?_pretty=true"):
        text = client.get(path, headers=auth).get_data(as_text=True)
        assert "\n  " in text, path
        json.loads(text)
    same = client.get(f"/fhir/Patient/{pid}?_pretty=true", headers=auth).get_json(force=True)
    assert same == json.loads(compact)
    assert "\n" not in client.get(f"/fhir/Patient/{pid}?_pretty=false", headers=auth).get_data(as_text=True)


def test_history_since_keeps_the_versions_written_at_or_after_it(client, auth, practice) -> None:
    import time
    from datetime import UTC, datetime

    pid = _create(client, auth, practice).get_json(force=True)["id"]
    time.sleep(0.01)
    cut = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    data = client.get(f"/fhir/Patient/{pid}", headers=auth).get_json(force=True)
    data["birthDate"] = "1970-01-01"
    assert (
        client.put(f"/fhir/Patient/{pid}", data=json.dumps(data), headers={**auth, "Content-Type": FHIR}).status_code
        == 200
    )

    def versions(query: str) -> list[str]:
        resp = client.get(f"/fhir/Patient/{pid}/_history{query}", headers=auth)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return [e["resource"]["meta"]["versionId"] for e in resp.get_json(force=True)["entry"]]

    assert versions("") == ["2", "1"]
    assert versions(f"?_since={cut}") == ["2"]
    assert versions("?_since=2000-01-01T00:00:00%2B02:00") == ["2", "1"]
    assert versions("?_since=2999-01-01T00:00:00.123456789Z") == []


@pytest.mark.parametrize("since", ["yesterday", "2026-01-01", "2026-01-01T10:00:00", "2026-02-30T10:00:00Z"])
def test_history_since_that_is_not_an_instant_is_400(client, auth, practice, since) -> None:
    pid = _create(client, auth, practice).get_json(force=True)["id"]
    resp = client.get(f"/fhir/Patient/{pid}/_history", query_string={"_since": since}, headers=auth)
    assert resp.status_code == 400
    assert "_since" in json.dumps(resp.get_json(force=True))

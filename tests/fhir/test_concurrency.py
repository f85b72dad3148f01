"""Concurrent writers and readers over real HTTP never fail with "database is locked" (SQLite)
or lose a write (both databases)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from fhirserver.extensions import db
from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, make_practice, message_json, token_for
from tests.fhir.test_api import FHIR


def test_parallel_sends_reads_and_counts(app, live_server, settings):
    with app.app_context():
        p = make_practice(db.session, settings)
        db.session.remove()
    patient = {
        "Authorization": "Bearer " + token_for(app, settings, p.patient_user_id, PATIENT_SCOPE, patient=p.patient_id),
        "Content-Type": FHIR,
    }
    provider = {"Authorization": "Bearer " + token_for(app, settings, p.provider_user_id, PROVIDER_SCOPE)}
    base = live_server.url + "/fhir"

    def work(i: int) -> list[int]:
        with requests.Session() as s:
            body = json.dumps(message_json(p.patient_ref, p.practitioner_ref, topic=f"parallel {i}"))
            created = s.post(f"{base}/Communication", data=body, headers=patient, timeout=30)
            cid = created.json().get("id")
            read = s.get(f"{base}/Communication/{cid}", headers=provider, timeout=30)
            marked = s.post(f"{base}/Communication/{cid}/$mark-read", headers=provider, timeout=30)
            count = s.get(f"{base}/Communication/$unread-count", headers=provider, timeout=30)
            return [created.status_code, read.status_code, marked.status_code, count.status_code]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(work, range(32)))
    assert all(s == [201, 200, 200, 200] for s in statuses), statuses
    final = requests.get(f"{base}/Communication/$unread-count", headers=provider, timeout=30).json()
    assert final["parameter"][0]["valueInteger"] == 0
    sent = requests.post(
        f"{base}/Communication/_search",
        data={"sender": p.patient_ref, "_count": "100"},
        headers={"Authorization": patient["Authorization"]},
        timeout=30,
    ).json()
    assert len(sent["entry"]) == 32

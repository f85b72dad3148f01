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


def test_two_puts_creating_one_id_give_a_409_to_the_loser_never_a_500(settings):
    """Update-as-create has no row to lock: the second insert of the same id loses on the
    primary key. It gets 409 (retry), the first one's resource stays, and a retry updates."""
    import threading
    import time

    from fhirserver.core.http import FhirRequest
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository
    from fhirserver.core.router import dispatch
    from fhirserver.db import make_sessionmaker
    from tests.factories import patient_json
    from tests.support import uid

    maker = make_sessionmaker(settings.database_url)
    first, second = maker(), maker()
    rid = f"race-{uid()}"
    body = {**patient_json([], family="First"), "id": rid}
    server = system_principal("test")
    try:
        Repository(first, settings, server).update("Patient", rid, body, None)  # inserted, not committed
        answer: list[int] = []

        def racer() -> None:
            req = FhirRequest(
                "PUT", f"Patient/{rid}", body=json.dumps({**body, "name": [{"family": "Second"}]}).encode()
            )
            answer.append(dispatch(req, second, settings, server).status)

        t = threading.Thread(target=racer)
        t.start()
        time.sleep(0.5)  # PostgreSQL: the racer waits on the uncommitted key; SQLite: on the write lock
        first.commit()
        t.join(60)
        # PostgreSQL: the key was taken under the racer, 409. SQLite serialises whole
        # transactions, so the racer began after the commit and updated.
        assert answer == [200 if settings.is_sqlite else 409]
        retry = FhirRequest("PUT", f"Patient/{rid}", body=json.dumps({**body, "name": [{"family": "Retry"}]}).encode())
        assert dispatch(retry, second, settings, server).status == 200
        stored = Repository(first, settings, server).read("Patient", rid)
        assert stored.json()["name"][0]["family"] == "Retry"
        assert stored.version_id == (3 if settings.is_sqlite else 2)
    finally:
        first.close()
        second.close()
        maker.kw["bind"].dispose()


def _patient_for_patching(app, live_server, settings):
    from tests.factories import patient_json

    with app.app_context():
        p = make_practice(db.session, settings)
        db.session.remove()
    auth = {"Authorization": "Bearer " + token_for(app, settings, p.provider_user_id, PROVIDER_SCOPE)}
    base = live_server.url + "/fhir"
    body = json.dumps(patient_json([p.practitioner_ref]))
    created = requests.post(f"{base}/Patient", data=body, headers={**auth, "Content-Type": FHIR}, timeout=30)
    assert created.status_code == 201
    return base, auth, created.json()["id"]


def test_eight_patches_with_the_same_if_match_one_wins_the_rest_get_412(app, live_server, settings):
    base, auth, pid = _patient_for_patching(app, live_server, settings)
    headers = {**auth, "Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'}

    def work(i: int) -> int:
        ops = json.dumps([{"op": "add", "path": "/telecom/-", "value": {"system": "phone", "value": f"555-01{i:02d}"}}])
        return requests.patch(f"{base}/Patient/{pid}", data=ops, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(work, range(8)))
    assert statuses == [200] + [412] * 7, statuses
    final = requests.get(f"{base}/Patient/{pid}", headers=auth, timeout=30).json()
    assert final["meta"]["versionId"] == "2"


def test_eight_patches_without_if_match_all_apply_none_is_lost(app, live_server, settings):
    """Each patch is applied to the version it locked: eight appends give eight more phone numbers."""
    base, auth, pid = _patient_for_patching(app, live_server, settings)
    before = len(requests.get(f"{base}/Patient/{pid}", headers=auth, timeout=30).json().get("telecom", []))
    headers = {**auth, "Content-Type": "application/json-patch+json"}

    def work(i: int) -> int:
        ops = json.dumps([{"op": "add", "path": "/telecom/-", "value": {"system": "phone", "value": f"555-02{i:02d}"}}])
        return requests.patch(f"{base}/Patient/{pid}", data=ops, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(work, range(8)))
    assert statuses == [200] * 8, statuses
    final = requests.get(f"{base}/Patient/{pid}", headers=auth, timeout=30).json()
    assert len(final["telecom"]) == before + 8 and final["meta"]["versionId"] == "9"

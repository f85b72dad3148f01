"""C9: SMART 2 granular scopes (``patient/Communication.rs?category=system|code``) over the API.

As US Core's granular-scope tests do, most checks are paired queries over one seeded
practice: the same search runs with a resource-level token (``Communication.rs``) and a
granular one (``Communication.rs?category=...``); the granular results must be exactly
the resource-level results whose category matches the filter, worked out here in Python
from the resource-level results themselves. Seeded messages carry several categories
(every one also carries the WebMail category, which the server adds), including the same
code in another system, so that a filter that ignored the system or the code would fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.core.resource_types import SCOPE_FILTERS, SERVED_TYPES
from fhirserver.extensions import db
from fhirserver.search.params import REGISTRY
from smart_auth import accounts
from tests.factories import make_patient, make_practice, message_json, token_for

FHIR = "application/fhir+json"
HL7 = "http://terminology.hl7.org/CodeSystem/communication-category"
OTHER = "http://other.example/CodeSystem/categories"
WEBMAIL = "http://fhir-webmail.example/CodeSystem/communication-category"
NOTIFICATION = f"{HL7}|notification"
ALERT = f"{HL7}|alert"
# Each seeded message of the patient: its extra categories (system, code).
SEED: dict[str, tuple[tuple[str, str], ...]] = {
    "plain": (),
    "notification": ((HL7, "notification"),),
    "alert": ((HL7, "alert"),),
    "both": ((HL7, "notification"), (HL7, "alert")),
    "reminder": ((HL7, "reminder"),),
    "other_system": ((OTHER, "notification"),),
    "from_patient": ((HL7, "notification"),),
}


@dataclass
class Seeded:
    practice: Any
    ids: dict[str, str]  # seed name -> Communication id (patient A's)
    patient_b: str  # a second patient of the same provider
    ids_b: dict[str, str]


def _categories(extra: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    return [{"coding": [{"system": s, "code": c}]} for s, c in extra]


@pytest.fixture(scope="module")
def seeded(app, settings) -> Seeded:
    with app.app_context():
        practice = make_practice(db.session, settings)
        patient_b = make_patient(db.session, settings, practice.practitioner_ref)
        accounts.grant_portal_access(db.session, settings, patient_id=patient_b, first_name="Bea")
        system = Repository(db.session, settings, system_principal("tests"))
        prac, pat = practice.practitioner_ref, practice.patient_ref
        ids: dict[str, str] = {}
        for name, extra in SEED.items():
            body = (
                message_json(pat, prac, pat, topic=name)
                if name == "from_patient"
                else message_json(prac, pat, pat, topic=name)
            )
            if extra:
                body["category"] = _categories(extra)  # the server adds the WebMail category
            ids[name] = system.create("Communication", body).res_id
        ids_b = {}
        for name in ("notification", "alert"):
            body = message_json(prac, f"Patient/{patient_b}", f"Patient/{patient_b}", topic=name)
            body["category"] = _categories(SEED[name])
            ids_b[name] = system.create("Communication", body).res_id
        db.session.commit()
        db.session.remove()
    return Seeded(practice, ids, patient_b, ids_b)


def _patient_token(app, settings, seeded: Seeded, scope: str) -> dict[str, str]:
    p = seeded.practice
    token = token_for(app, settings, p.patient_user_id, f"launch/patient {scope}", patient=p.patient_id)
    return {"Authorization": f"Bearer {token}"}


def _provider_token(app, settings, seeded: Seeded, scope: str, patient: str | None = None) -> dict[str, str]:
    scope = f"launch/patient {scope}" if patient else scope
    token = token_for(app, settings, seeded.practice.provider_user_id, scope, patient=patient)
    return {"Authorization": f"Bearer {token}"}


def _search(client, headers, query: str = "") -> list[dict[str, Any]]:
    sep = "&" if query else ""
    r = client.get(f"/fhir/Communication?{query}{sep}_count=100", headers=headers)
    assert r.status_code == 200, r.get_json(force=True)
    bundle = r.get_json(force=True)
    assert bundle["type"] == "searchset" and "next" not in {link["relation"] for link in bundle.get("link", [])}
    return [e["resource"] for e in bundle.get("entry", [])]


def _ids(resources: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in resources}


def _token_matches(value: str, system: str | None, code: str | None) -> bool:
    """The FHIR token-search meaning of one scope value, on one Coding (the reference model)."""
    if "|" not in value:
        return code == value
    want_system, _, want_code = value.partition("|")
    if not want_system:
        return system is None and code == want_code
    return system == want_system and (not want_code or code == want_code)


def _filtered(resources: list[dict[str, Any]], values: list[str]) -> set[str]:
    """The ids whose category matches one of ``values``: what the granular token must return."""
    out = set()
    for r in resources:
        codings = [c for cat in r.get("category", []) for c in cat.get("coding", [])]
        if any(_token_matches(v, c.get("system"), c.get("code")) for v in values for c in codings):
            out.add(r["id"])
    return out


SEARCHES = (
    "",
    f"category={WEBMAIL}|webmail",
    f"category={ALERT}",
    f"category={NOTIFICATION},{ALERT}",
    "category=notification",
    "status=completed",
    "_sort=-sent",
    "category:not=" + NOTIFICATION,
    "category:missing=false",
)
FILTERS = (
    [NOTIFICATION],
    [NOTIFICATION, ALERT],
    ["notification"],  # a code in any system: also the other system's notification
    [f"{HL7}|"],  # any code of the system
    [f"{OTHER}|notification"],
)


@pytest.mark.parametrize("values", FILTERS, ids=lambda v: ",".join(v))
def test_C9_paired_queries_granular_equals_resource_level_filtered_by_category(app, client, settings, seeded, values):
    query = ",".join(values)
    pairs = [
        (
            _patient_token(app, settings, seeded, "patient/Communication.rs"),
            _patient_token(app, settings, seeded, f"patient/Communication.rs?category={query}"),
        ),
        (
            _provider_token(app, settings, seeded, "user/Communication.rs"),
            _provider_token(app, settings, seeded, f"user/Communication.rs?category={query}"),
        ),
    ]
    for broad, granular in pairs:
        for search in SEARCHES:
            baseline = _search(client, broad, search)
            expected = _filtered(baseline, values)
            assert _ids(_search(client, granular, search)) == expected, search
        # The pairing is not vacuous: some seeded messages match and some do not.
        everything = _search(client, broad)
        assert _filtered(everything, values) and _filtered(everything, values) != _ids(everything)


def test_C9_a_category_outside_the_scope_gives_an_empty_bundle(app, client, settings, seeded):
    broad = _patient_token(app, settings, seeded, "patient/Communication.rs")
    granular = _patient_token(app, settings, seeded, f"patient/Communication.rs?category={NOTIFICATION}")
    for search in (f"category={HL7}|reminder", f"category={OTHER}|notification", f"_id={seeded.ids['alert']}"):
        assert _search(client, broad, search), search  # it exists and the resource-level token sees it
        assert _search(client, granular, search) == [], search
    r = client.post(
        "/fhir/Communication/_search", data={"category": f"{HL7}|reminder"}, headers=granular
    )  # POST search alike
    assert r.status_code == 200 and not r.get_json(force=True).get("entry")


def test_C9_read_vread_and_history_of_an_excluded_resource_are_404(app, client, settings, seeded):
    granular = _patient_token(app, settings, seeded, f"patient/Communication.rs?category={NOTIFICATION}")
    broad = _patient_token(app, settings, seeded, "patient/Communication.rs")
    for name in ("alert", "reminder", "other_system", "plain"):
        rid = seeded.ids[name]
        for path in (f"/fhir/Communication/{rid}", f"/fhir/Communication/{rid}/_history/1"):
            assert client.get(path, headers=broad).status_code == 200, path
            r = client.get(path, headers=granular)
            assert r.status_code == 404 and r.get_json(force=True)["resourceType"] == "OperationOutcome", path
        assert client.get(f"/fhir/Communication/{rid}/_history", headers=granular).status_code == 404
        # Operations on it answer alike (mark-read needs .u: a granular .rus token).
    granular_u = _patient_token(app, settings, seeded, f"patient/Communication.rus?category={NOTIFICATION}")
    assert client.post(f"/fhir/Communication/{seeded.ids['alert']}/$mark-read", headers=granular_u).status_code == 404
    for name in ("notification", "both", "from_patient"):
        rid = seeded.ids[name]
        assert client.get(f"/fhir/Communication/{rid}", headers=granular).status_code == 200
        assert client.get(f"/fhir/Communication/{rid}/_history/1", headers=granular).status_code == 200
        assert client.get(f"/fhir/Communication/{rid}/_history", headers=granular).status_code == 200


def test_C9_id_subject_and_modifier_tricks_stay_confined(app, client, settings, seeded):
    granular = _patient_token(app, settings, seeded, f"patient/Communication.rs?category={NOTIFICATION}")
    allowed = {seeded.ids[n] for n in ("notification", "both", "from_patient")}
    every_id = ",".join(seeded.ids.values())
    pref = seeded.practice.patient_ref
    for search in (
        f"_id={every_id}",
        f"_id={seeded.ids['alert']},{seeded.ids['notification']}",
        f"subject={pref}",
        f"patient={pref}",
        f"recipient={pref}",
        f"sender={seeded.practice.practitioner_ref}",
        f"category:not={NOTIFICATION}",
        "category:missing=true",
        f"category={ALERT}&_id={seeded.ids['alert']}",
        f"category={WEBMAIL}|webmail&category={ALERT}",
    ):
        found = _ids(_search(client, granular, search))
        assert found <= allowed, search
    assert _ids(_search(client, granular, f"_id={every_id}")) == allowed
    assert _search(client, granular, f"category:not={NOTIFICATION}") == []


def test_C9_writes_must_match_the_filter(app, client, settings, seeded):
    p = seeded.practice
    scope = f"patient/Communication.crs?category={NOTIFICATION}"
    headers = {**_patient_token(app, settings, seeded, scope), "Content-Type": FHIR}
    broad = _patient_token(app, settings, seeded, "patient/Communication.rs")
    before = len(_search(client, broad))

    def send(extra: tuple[tuple[str, str], ...]) -> Any:
        body = message_json(p.patient_ref, p.practitioner_ref, p.patient_ref, topic="granular write")
        if extra:
            body["category"] = _categories(extra)
        else:
            body.pop("category")  # the server adds only the WebMail category
        return client.post("/fhir/Communication", data=json.dumps(body), headers=headers)

    for extra in ((), ((HL7, "alert"),), ((OTHER, "notification"),)):
        r = send(extra)
        assert r.status_code == 403 and r.get_json(force=True)["resourceType"] == "OperationOutcome", extra
    assert len(_search(client, broad)) == before  # nothing was stored by a refusal
    ok = send(((HL7, "notification"),))
    assert ok.status_code == 201, ok.get_json(force=True)
    new_id = ok.get_json(force=True)["id"]
    assert client.get(f"/fhir/Communication/{new_id}", headers=headers).status_code == 200
    # Several categories, one of which matches: inside the filter.
    assert send(((HL7, "alert"), (HL7, "notification"))).status_code == 201
    assert len(_search(client, broad)) == before + 2


def test_C9_a_filtered_read_beside_an_unfiltered_create_leaves_creating_unfiltered(app, client, settings, seeded):
    p = seeded.practice
    scope = f"patient/Communication.rs?category={NOTIFICATION} patient/Communication.c"
    headers = {**_patient_token(app, settings, seeded, scope), "Content-Type": FHIR}
    body = message_json(p.patient_ref, p.practitioner_ref, p.patient_ref, topic="unfiltered create")
    r = client.post("/fhir/Communication", data=json.dumps(body), headers=headers)
    assert r.status_code == 201, r.get_json(force=True)
    # Created, but outside what the filtered read scope shows.
    assert client.get(f"/fhir/Communication/{r.get_json(force=True)['id']}", headers=headers).status_code == 404


def test_C9_scopes_on_one_type_combine_as_a_union(app, client, settings, seeded):
    broad = _patient_token(app, settings, seeded, "patient/Communication.rs")
    everything = _search(client, broad)
    plus_unfiltered = _patient_token(
        app, settings, seeded, f"patient/Communication.rs?category={NOTIFICATION} patient/Communication.rs"
    )
    assert _ids(_search(client, plus_unfiltered)) == _ids(everything)
    assert client.get(f"/fhir/Communication/{seeded.ids['alert']}", headers=plus_unfiltered).status_code == 200
    two_filters = _patient_token(
        app,
        settings,
        seeded,
        f"patient/Communication.rs?category={NOTIFICATION} patient/Communication.rs?category={ALERT}",
    )
    assert _ids(_search(client, two_filters)) == _filtered(everything, [NOTIFICATION, ALERT])


def test_C9_a_user_filter_and_a_patient_scope_are_a_precise_union(app, client, settings, seeded):
    """user/ with a filter, patient/ without: all of the patient in context, the filter elsewhere."""
    p = seeded.practice
    broad = _provider_token(app, settings, seeded, "user/Communication.rs")
    everything = _search(client, broad)
    mixed = _provider_token(
        app,
        settings,
        seeded,
        f"user/Communication.rs?category={NOTIFICATION} patient/Communication.rs",
        patient=p.patient_id,
    )
    mine = {r["id"] for r in everything if r.get("subject", {}).get("reference") == p.patient_ref}
    expected = mine | _filtered(everything, [NOTIFICATION])
    assert seeded.ids_b["alert"] not in expected and seeded.ids_b["notification"] in expected
    assert _ids(_search(client, mixed)) == expected
    assert client.get(f"/fhir/Communication/{seeded.ids_b['alert']}", headers=mixed).status_code == 404
    assert client.get(f"/fhir/Communication/{seeded.ids['alert']}", headers=mixed).status_code == 200


def test_C9_a_malformed_filter_in_a_token_grants_nothing_rather_than_everything(app, client, settings, seeded):
    """A token carrying an undeclared filter (never issued by /auth/authorize) is not widened."""
    headers = _patient_token(app, settings, seeded, "patient/Communication.rs?status=completed")
    assert client.get("/fhir/Communication", headers=headers).status_code == 403
    assert client.get(f"/fhir/Communication/{seeded.ids['plain']}", headers=headers).status_code in (403, 404)


def test_C9_every_served_type_declares_its_scope_filters():
    """A type served later without its SCOPE_FILTERS entry, or without its category/code filters, fails."""
    assert set(SCOPE_FILTERS) == set(SERVED_TYPES)
    for res_type in SERVED_TYPES:
        params = REGISTRY.get(res_type, {})
        for name in SCOPE_FILTERS[res_type]:
            assert name in params and params[name].type == "token" and params[name].column is None, (res_type, name)
        smart_named = {n for n in ("category", "code") if n in params and params[n].type == "token"}
        assert smart_named <= set(SCOPE_FILTERS[res_type]), res_type
    assert SCOPE_FILTERS["Communication"] == ("category",)


def test_C9_the_unread_count_counts_only_what_the_filtered_grant_can_read(app, settings, client) -> None:
    """$unread-count is a read of Communications too: a filtered token does not count the rest."""
    with app.app_context():
        practice = make_practice(db.session, settings)
        system = Repository(db.session, settings, system_principal("tests"))
        prac, pat = practice.practitioner_ref, practice.patient_ref
        for name in ("plain", "alert", "both", "other_system"):
            body = message_json(prac, pat, pat, topic=name)
            if SEED[name]:
                body["category"] = _categories(SEED[name])
            system.create("Communication", body)
        db.session.commit()
        db.session.remove()

    def count(scope: str) -> int:
        token = token_for(
            app, settings, practice.patient_user_id, f"launch/patient {scope}", patient=practice.patient_id
        )
        r = client.get("/fhir/Communication/$unread-count", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.get_json(force=True)
        return int(r.get_json(force=True)["parameter"][0]["valueInteger"])

    assert count("patient/Communication.rs") == 4
    assert count(f"patient/Communication.rs?category={ALERT}") == 2  # "alert" and "both"
    assert count(f"patient/Communication.rs?category={NOTIFICATION}") == 1  # "both"; not the other system's

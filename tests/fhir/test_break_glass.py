"""Break-glass (checklist C12, E2's break-glass, E6 (a)(2)(ii)) against the real API, both databases.

A provider outside a patient's care finds them by exact identifier and birth date and gives a
reason (``POST /fhir/Patient/$break-glass``); a grant row opens the patient's compartment to
that user, for reading, for BREAK_GLASS_MINUTES; the access is audited with purposeOfUse
ETREAT and the practice's administrators and the patient's primary providers are emailed,
with no PHI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from fhirserver.break_glass import MAX_ATTEMPTS, REVIEW_DAYS, purge, reason_of, revoke
from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.extensions import db
from fhirserver.models import AuditLogRow, BreakGlassAttempt, BreakGlassGrant, OutboxRow
from notifier.email import BREAK_GLASS_KIND, alert_recipient_ref, build_notification
from tests.factories import PROVIDER_SCOPE, message_json, patient_json, practitioner_json, token_for
from tests.support import MailCatcher, uid

FHIR = "application/fhir+json"
MRN = "urn:oid:2.16.840.1.113883.4.1.99"
BIRTH = "1980-04-02"
REASON = "Unconscious in the ER, need allergies ZZREASON"
ALERT_ADDRESS = "security.office@practice.example"


def _params(identifier: str | None, birthdate: str | None, reason: str | None, **extra: Any) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if identifier is not None:
        params.append({"name": "identifier", "valueString": identifier})
    if birthdate is not None:
        params.append({"name": "birthdate", "valueDate": birthdate})
    if reason is not None:
        params.append({"name": "reason", "valueString": reason})
    return {"resourceType": "Parameters", "parameter": params, **extra}


def _value(body: dict[str, Any], name: str) -> Any:
    for p in body.get("parameter", []):
        if p["name"] == name:
            return p.get("resource") or next(v for k, v in p.items() if k.startswith("value"))
    return None


class World:
    """Two practices: A (provider, patient with an MRN, a message) and B (provider, staff, patient)."""

    def __init__(self, app: Any, settings: Any) -> None:
        from smart_auth import accounts

        self.app, self.settings = app, settings
        self.mrn = f"MRN-{uid()}"
        self.family = f"ZZFamily{uid()}"
        with app.app_context():
            s = db.session
            system = Repository(s, settings, system_principal("tests"))
            prac_a = system.create("Practitioner", practitioner_json(family=f"DocA{uid()}"))
            pa = practitioner_json(family=f"DocAlert{uid()}")
            pa["telecom"] = [{"system": "email", "value": f"gp.{uid()}@practice.example"}]
            self.gp_email = pa["telecom"][0]["value"]
            prac_a2 = system.create("Practitioner", pa)
            prac_b = system.create("Practitioner", practitioner_json(family=f"DocB{uid()}"))
            prac_c = system.create("Practitioner", practitioner_json(family=f"DocC{uid()}"))
            self.prac_a, self.prac_a2, self.prac_b = prac_a.res_id, prac_a2.res_id, prac_b.res_id
            self.patient_a = system.create(
                "Patient",
                patient_json(
                    [f"Practitioner/{prac_a.res_id}", f"Practitioner/{prac_a2.res_id}"],
                    family=self.family,
                    given="ZZGiven",
                    identifier=[{"system": MRN, "value": self.mrn}],
                    birthDate=BIRTH,
                ),
            ).res_id
            self.patient_b = system.create("Patient", patient_json([f"Practitioner/{prac_b.res_id}"])).res_id
            users = {}
            pw = "correct horse battery staple"
            for role, kind, fhir_user, staff_of in (
                ("provider_a", "provider", f"Practitioner/{prac_a.res_id}", ()),
                ("provider_b", "provider", f"Practitioner/{prac_b.res_id}", ()),
                ("provider_c", "provider", f"Practitioner/{prac_c.res_id}", ()),
                ("staff_b", "staff", None, (f"Practitioner/{prac_b.res_id}",)),
                ("patient_a", "patient", f"Patient/{self.patient_a}", ()),
                ("patient_b", "patient", f"Patient/{self.patient_b}", ()),
                ("admin", "admin", None, ()),
                ("auditor", "auditor", None, ()),
            ):
                users[role] = accounts.create_user(
                    s,
                    username=f"bg{role.replace('_', '')}{uid()}",
                    password=pw,
                    role=kind,
                    settings=settings,
                    fhir_user=fhir_user,
                    staff_of=staff_of,
                )
            s.commit()
            self.comm_a = (
                Repository(s, settings, system_principal("tests"))
                .create(
                    "Communication",
                    message_json(
                        f"Practitioner/{prac_a.res_id}", f"Patient/{self.patient_a}", f"Patient/{self.patient_a}"
                    ),
                )
                .res_id
            )
            s.commit()
            self.user_ids = {r: u.id for r, u in users.items()}
            db.session.remove()
        self.tokens = {role: self.token(role) for role in self.user_ids}

    def token(self, role: str, scope: str | None = None) -> str:
        if scope is None:
            scope = "launch/patient patient/*.cruds" if role.startswith("patient") else PROVIDER_SCOPE
            if role == "auditor":
                scope = "user/AuditEvent.rs"
        patient = self.patient_b if role == "patient_b" else None
        return token_for(self.app, self.settings, self.user_ids[role], scope, patient=patient)

    def headers(self, role: str, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.tokens[role]}", "Content-Type": FHIR}

    def glass(self, client: Any, role: str = "provider_b", **kw: Any) -> Any:
        body = _params(
            kw.pop("identifier", f"{MRN}|{self.mrn}"), kw.pop("birthdate", BIRTH), kw.pop("reason", REASON), **kw
        )
        return client.post("/fhir/Patient/$break-glass", data=json.dumps(body), headers=self.headers(role))


@pytest.fixture()
def world(app: Any, settings: Any) -> World:
    return World(app, settings)


def _grants(app: Any, user_id: str) -> list[BreakGlassGrant]:
    with app.app_context():
        rows = list(db.session.execute(select(BreakGlassGrant).where(BreakGlassGrant.user_id == user_id)).scalars())
        db.session.expunge_all()
        db.session.remove()
        return rows


def _audit_events(app: Any, settings: Any, patient_id: str | None = None) -> list[dict[str, Any]]:
    with app.app_context():
        stmt = select(AuditLogRow)
        rows = db.session.execute(stmt).scalars().all()
        events = [json.loads(r.content) for r in rows if r.content]
        db.session.remove()
    if patient_id is None:
        return events
    ref = f"Patient/{patient_id}"
    return [e for e in events if any((x.get("what") or {}).get("reference") == ref for x in e.get("entity", []))]


def _purpose(event: dict[str, Any]) -> str | None:
    for agent in event["agent"]:
        for pou in agent.get("purposeOfUse", []):
            return str(pou["coding"][0]["code"])
    return None


# -- the request ---------------------------------------------------------------------------------


def test_C12_reason_is_required_in_the_body(client: Any, world: World) -> None:
    for reason in (None, "", "too short", "x" * 501, "          "):
        resp = world.glass(client, reason=reason)
        assert resp.status_code == 400, reason
        outcome = resp.get_json(force=True)
        assert outcome["resourceType"] == "OperationOutcome"
        assert "reason" in outcome["issue"][0]["diagnostics"]
    # Never in a URL: query parameters are refused, even with a valid body.
    url = f"/fhir/Patient/$break-glass?reason=Emergency+care+needed&identifier={MRN}|{world.mrn}"
    body = json.dumps(_params(f"{MRN}|{world.mrn}", BIRTH, REASON))
    assert client.post(url, data=body, headers=world.headers("provider_b")).status_code == 400
    # A GET (whose parameters would be in the URL) is not the operation.
    assert client.get("/fhir/Patient/$break-glass", headers=world.headers("provider_b")).status_code == 405
    for bad in (b"", b"not json", b'{"resourceType":"Patient"}', b'{"resourceType":"Parameters","parameter":[]}'):
        assert (
            client.post("/fhir/Patient/$break-glass", data=bad, headers=world.headers("provider_b")).status_code == 400
        )
    assert _grants(world.app, world.user_ids["provider_b"]) == []
    assert world.glass(client).status_code == 200


def test_C12_bad_parameters_never_echo_their_values(client: Any, world: World) -> None:
    secret = f"ZZSECRET{uid()}"
    for kw in (
        {"identifier": secret},
        {"birthdate": secret},
        {"reason": secret * 40},
        {"identifier": f"{MRN}|{world.mrn}|{secret}"},
    ):
        resp = world.glass(client, **kw)
        assert resp.status_code == 400
        assert secret not in resp.get_data(as_text=True)
    extra = {"name": "note", "valueString": secret}
    body = _params(f"{MRN}|{world.mrn}", BIRTH, REASON)
    body["parameter"].append(extra)
    resp = client.post("/fhir/Patient/$break-glass", data=json.dumps(body), headers=world.headers("provider_b"))
    assert resp.status_code == 400 and secret not in resp.get_data(as_text=True)


def test_C12_identifier_and_birthdate_must_both_match_exactly(client: Any, world: World) -> None:
    misses = {
        "wrong birth date": {"birthdate": "1980-04-03"},
        "unknown identifier": {"identifier": f"{MRN}|MRN-{uid()}"},
        "prefix of the identifier": {"identifier": f"{MRN}|{world.mrn[:-2]}"},
        "other case": {"identifier": f"{MRN}|{world.mrn.lower()}"},
        "other system": {"identifier": f"urn:other|{world.mrn}"},
    }
    answers = {}
    for what, kw in misses.items():
        resp = world.glass(client, **kw)
        assert resp.status_code == 200, what
        answers[what] = resp.get_data()
        assert _value(resp.get_json(force=True), "match") is False, what
        assert _value(resp.get_json(force=True), "patient") is None, what
    # Nothing tells which part was wrong: a wrong birth date answers exactly like no such patient.
    assert len(set(answers.values())) == 1
    # No partial date: a year or a month is not a birth date.
    assert world.glass(client, birthdate="1980").status_code == 400
    assert world.glass(client, birthdate="1980-04").status_code == 400
    # The identifier also as a FHIR Identifier.
    body = _params(None, BIRTH, REASON)
    body["parameter"].insert(0, {"name": "identifier", "valueIdentifier": {"system": MRN, "value": world.mrn}})
    resp = client.post("/fhir/Patient/$break-glass", data=json.dumps(body), headers=world.headers("provider_b"))
    assert resp.status_code == 200
    assert _value(resp.get_json(force=True), "patient")["id"] == world.patient_a
    assert _grants(world.app, world.user_ids["provider_b"])[0].patient_id == world.patient_a


def test_C12_patient_in_care_is_returned_without_a_grant(client: Any, world: World) -> None:
    resp = world.glass(client, "provider_a")
    assert resp.status_code == 200
    body = resp.get_json(force=True)
    assert _value(body, "inCare") is True and _value(body, "patient")["id"] == world.patient_a
    assert _value(body, "expires") is None
    assert _grants(world.app, world.user_ids["provider_a"]) == []


# -- what the grant opens ------------------------------------------------------------------------


def _reads(client: Any, world: World, role: str, token: str | None = None) -> dict[str, Any]:
    h = world.headers(role, token)
    found = client.get(f"/fhir/Communication?subject=Patient/{world.patient_a}", headers=h)
    return {
        "patient": client.get(f"/fhir/Patient/{world.patient_a}", headers=h).status_code,
        "history": client.get(f"/fhir/Patient/{world.patient_a}/_history", headers=h).status_code,
        "search": [
            e["resource"]["id"]
            for e in client.get(f"/fhir/Patient?_id={world.patient_a}", headers=h).get_json().get("entry", [])
        ],
        "message": client.get(f"/fhir/Communication/{world.comm_a}", headers=h).status_code,
        "messages": [e["resource"]["id"] for e in found.get_json().get("entry", [])],
    }


CLOSED = {"patient": 404, "history": 404, "search": [], "message": 404, "messages": []}


def test_C12_grant_opens_the_patient_and_their_communications_to_this_provider_only(client: Any, world: World) -> None:
    assert _reads(client, world, "provider_b") == CLOSED
    start = datetime.now(UTC).replace(microsecond=0)
    with time_machine.travel(start, tick=False):
        resp = world.glass(client)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json(force=True)
    assert _value(body, "match") is True and _value(body, "inCare") is False
    assert _value(body, "patient")["id"] == world.patient_a
    expires = datetime.fromisoformat(_value(body, "expires").replace("Z", "+00:00"))
    assert expires == start + timedelta(minutes=world.settings.break_glass_minutes)
    opened = {"patient": 200, "history": 200, "search": [world.patient_a], "message": 200, "messages": [world.comm_a]}
    assert _reads(client, world, "provider_b") == opened
    # Any token of the same user: the grant is the user's, server-side, not the token's.
    assert _reads(client, world, "provider_b", world.token("provider_b")) == opened
    # Nobody else gains anything: another provider, and the staff of the provider who broke the glass.
    assert _reads(client, world, "provider_c") == CLOSED
    assert _reads(client, world, "staff_b") == CLOSED
    # B's own patients are untouched.
    h = world.headers("provider_b")
    assert client.get(f"/fhir/Patient/{world.patient_b}", headers=h).status_code == 200


def test_C12_break_glass_opens_reading_only(client: Any, world: World) -> None:
    assert world.glass(client).status_code == 200
    h = world.headers("provider_b")
    with world.app.app_context():
        current = Repository(db.session, world.settings, system_principal("tests")).read("Patient", world.patient_a)
        data = current.json()
        db.session.remove()
    # Becoming their primary provider (which would keep the access for good) is refused.
    data["generalPractitioner"].append({"reference": f"Practitioner/{world.prac_b}"})
    assert client.put(f"/fhir/Patient/{world.patient_a}", data=json.dumps(data), headers=h).status_code == 404
    assert client.delete(f"/fhir/Patient/{world.patient_a}", headers=h).status_code == 404
    for op in ("$grant-portal-access", "$reset-portal-password"):
        assert client.post(f"/fhir/Patient/{world.patient_a}/{op}", headers=h).status_code == 404, op
    assert client.post(f"/fhir/Communication/{world.comm_a}/$mark-read", headers=h).status_code == 404
    msg = message_json(f"Practitioner/{world.prac_b}", f"Patient/{world.patient_a}", f"Patient/{world.patient_a}")
    assert client.post("/fhir/Communication", data=json.dumps(msg), headers=h).status_code == 422
    assert client.get(f"/fhir/Patient/{world.patient_a}", headers=h).status_code == 200


def test_C12_expiry_closes_the_compartment(client: Any, world: World, settings: Any) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False) as clock:
        assert world.glass(client).status_code == 200
        clock.shift(timedelta(minutes=settings.break_glass_minutes - 1))
        assert _reads(client, world, "provider_b")["patient"] == 200
        clock.shift(timedelta(minutes=2))
        token = world.token("provider_b")  # the first token has expired too by now
        assert _reads(client, world, "provider_b", token) == CLOSED


def test_C12_revoked_grant_closes_the_compartment_at_once(client: Any, world: World) -> None:
    assert world.glass(client).status_code == 200
    assert _reads(client, world, "provider_b")["patient"] == 200
    [grant] = _grants(world.app, world.user_ids["provider_b"])
    with world.app.app_context():
        assert revoke(db.session, grant.id)
        db.session.commit()
        db.session.remove()
    assert _reads(client, world, "provider_b") == CLOSED


def test_C12_only_providers_may_break_the_glass(client: Any, world: World) -> None:
    for role in ("staff_b", "patient_b", "admin", "auditor"):
        resp = world.glass(client, role)
        assert resp.status_code == 403, role
        assert resp.get_json(force=True)["resourceType"] == "OperationOutcome"
        assert _grants(world.app, world.user_ids[role]) == []
    # A provider's token must read Patients at user level: patient/ scopes or no Patient read are refused.
    for scope in ("user/Communication.rs", "launch/patient patient/Patient.rs"):
        token = world.token("provider_b", scope)
        body = json.dumps(_params(f"{MRN}|{world.mrn}", BIRTH, REASON))
        resp = client.post("/fhir/Patient/$break-glass", data=body, headers=world.headers("provider_b", token))
        assert resp.status_code == 403, scope
    assert _grants(world.app, world.user_ids["provider_b"]) == []
    # The server itself (CLI, worker) has no use for it either.
    from fhirserver.core.http import FhirRequest
    from fhirserver.core.router import dispatch

    with world.app.app_context():
        req = FhirRequest("POST", "Patient/$break-glass", body=body.encode(), headers={"content-type": FHIR})
        assert dispatch(req, db.session, world.settings, system_principal("tests")).status == 403
        db.session.remove()


def test_C12_attempts_are_throttled(client: Any, world: World) -> None:
    for _ in range(MAX_ATTEMPTS):
        assert world.glass(client, "provider_c", birthdate="1999-01-01").status_code == 200
    resp = world.glass(client, "provider_c")
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    assert _grants(world.app, world.user_ids["provider_c"]) == []
    # Another provider is not held back by provider C's attempts.
    assert world.glass(client).status_code == 200


# -- audit ---------------------------------------------------------------------------------------


def test_C12_E2_break_glass_and_access_through_it_are_audited_etreat(client: Any, world: World) -> None:
    before = {e["id"] for e in _audit_events(world.app, world.settings)}
    assert world.glass(client, birthdate="1970-01-01").status_code == 200  # a miss
    assert world.glass(client).status_code == 200
    h = world.headers("provider_b")
    assert client.get(f"/fhir/Patient/{world.patient_a}", headers=h).status_code == 200
    assert client.get(f"/fhir/Communication/{world.comm_a}", headers=h).status_code == 200
    assert client.get(f"/fhir/Communication?subject=Patient/{world.patient_a}", headers=h).status_code == 200
    assert client.get(f"/fhir/Patient/{world.patient_b}", headers=h).status_code == 200  # B's own patient
    assert client.get(f"/fhir/Patient/{world.patient_a}", headers=world.headers("provider_a")).status_code == 200

    new = [e for e in _audit_events(world.app, world.settings) if e["id"] not in before]
    mine = [
        e
        for e in new
        if any(
            (a.get("who", {}).get("identifier") or {}).get("value") == world.user_ids["provider_b"] for a in e["agent"]
        )
    ]

    def kind(e: dict[str, Any]) -> str:
        return e["subtype"][0]["code"]

    def about(e: dict[str, Any]) -> set[str]:
        return {(x.get("what") or {}).get("reference") for x in e.get("entity", [])} - {None}

    security = [e for e in mine if kind(e) == "break-glass"]
    assert sorted(e["outcome"] for e in security) == ["0", "4"]  # the hit and the miss
    assert all(_purpose(e) == "ETREAT" for e in security)
    hit = next(e for e in security if e["outcome"] == "0")
    assert f"Patient/{world.patient_a}" in about(hit)
    ops = [e for e in mine if kind(e) == "operation"]
    assert len(ops) == 2 and all(_purpose(e) == "ETREAT" for e in ops)
    read_a = [e for e in mine if kind(e) == "read" and f"Patient/{world.patient_a}" in about(e)]
    assert len(read_a) == 2 and all(_purpose(e) == "ETREAT" for e in read_a)  # the Patient and the message
    search = [e for e in mine if kind(e) == "search-type"]
    assert search and all(_purpose(e) == "ETREAT" for e in search)
    read_b = [e for e in mine if kind(e) == "read" and f"Patient/{world.patient_b}" in about(e)]
    assert [_purpose(e) for e in read_b] == ["TREAT"]  # B's own patient: ordinary treatment
    others = [e for e in new if e not in mine and kind(e) == "read"]
    assert others and all(_purpose(e) == "TREAT" for e in others)  # A's own provider
    # The reason (which may be PHI) is in no AuditEvent.
    assert all("ZZREASON" not in json.dumps(e) for e in new)

    # An auditor finds them through the API.
    auditor = {"Authorization": f"Bearer {world.tokens['auditor']}"}
    found = client.get(f"/fhir/AuditEvent?patient=Patient/{world.patient_a}", headers=auditor).get_json()
    assert hit["id"] in {e["resource"]["id"] for e in found["entry"]}


def test_C12_E6_reason_is_stored_encrypted(client: Any, world: World) -> None:
    assert world.glass(client).status_code == 200
    [grant] = _grants(world.app, world.user_ids["provider_b"])
    assert b"ZZREASON" not in grant.reason and grant.key_id
    assert reason_of(world.settings, grant) == REASON
    assert grant.practitioner_ref == f"Practitioner/{world.prac_b}"
    assert grant.expires_at.replace(tzinfo=grant.expires_at.tzinfo or UTC) - grant.created_at.replace(
        tzinfo=grant.created_at.tzinfo or UTC
    ) == timedelta(minutes=world.settings.break_glass_minutes)


def test_C12_purge_keeps_grants_for_review_then_deletes_them(client: Any, world: World) -> None:
    assert world.glass(client).status_code == 200
    [grant] = _grants(world.app, world.user_ids["provider_b"])
    with world.app.app_context():
        s = db.session
        purge(s, datetime.now(UTC) + timedelta(days=REVIEW_DAYS - 1))
        assert s.get(BreakGlassGrant, grant.id) is not None
        user = world.user_ids["provider_b"]
        attempts = select(BreakGlassAttempt).where(BreakGlassAttempt.user_id == user)
        assert s.execute(attempts).first() is None  # older than the throttle window by then
        counts = purge(s, datetime.now(UTC) + timedelta(days=REVIEW_DAYS + 1))
        assert counts["break_glass_grants"] >= 1 and s.get(BreakGlassGrant, grant.id) is None
        s.rollback()
        db.session.remove()


# -- alerts --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alert_app(settings: Any) -> Any:
    """The API of a practice whose SECURITY_ALERT_EMAILS names an administrator (and a typo)."""
    from fhirserver.app import create_app

    return create_app(settings.with_(security_alert_emails=(ALERT_ADDRESS, "not an address")))


def test_C12_alerts_go_to_admins_and_primary_providers_without_phi(alert_app: Any, settings: Any) -> None:
    world = World(alert_app, settings.with_(security_alert_emails=(ALERT_ADDRESS, "not an address")))
    client = alert_app.test_client()
    resp = world.glass(client)
    assert resp.status_code == 200
    hit = next(
        e for e in _audit_events(alert_app, settings, world.patient_a) if e["subtype"][0]["code"] == "break-glass"
    )
    with alert_app.app_context():
        rows = list(db.session.execute(select(OutboxRow).where(OutboxRow.subject_id == hit["id"])).scalars())
        db.session.expunge_all()
        db.session.remove()
    assert {r.kind for r in rows} == {BREAK_GLASS_KIND}
    assert {r.recipient_ref for r in rows} == {
        alert_recipient_ref(ALERT_ADDRESS),
        f"Practitioner/{world.prac_a}",
        f"Practitioner/{world.prac_a2}",
    }
    # The outbox row names no address and no patient.
    assert all(ALERT_ADDRESS not in r.recipient_ref and world.patient_a not in r.recipient_ref for r in rows)

    # Delivered by the notifier to a real SMTP server.
    from notifier.tasks import deliver, session_maker
    from tests.notifier.notifier_support import assert_no_phi

    with MailCatcher() as mailbox:
        nsettings = settings.with_(smtp_url=mailbox.url, security_alert_emails=(ALERT_ADDRESS,))
        outcomes = {r.recipient_ref: deliver(nsettings, session_maker(nsettings), r.id).status for r in rows}
        assert outcomes[alert_recipient_ref(ALERT_ADDRESS)] == "sent"
        assert outcomes[f"Practitioner/{world.prac_a2}"] == "sent"
        assert outcomes[f"Practitioner/{world.prac_a}"] == "skipped"  # no email on record
        mails = mailbox.to(ALERT_ADDRESS) + mailbox.to(world.gp_email)
    assert len(mails) == 2
    for mail in mails:
        text = mail.message.get_body().get_content()  # type: ignore[union-attr]
        assert "a break-glass (emergency) access was recorded" in text.lower() and "review it in the audit log" in text
        assert f"{settings.base_url}/portal/console/" in text
        assert_no_phi(mail, world.family, "ZZGiven", world.mrn, world.patient_a, "ZZREASON", REASON, BIRTH, hit["id"])
        assert mail.message["Subject"] == "Security alert: a break-glass access was recorded"


def test_C12_alert_email_renders_no_phi(settings: Any) -> None:
    msg = build_notification(settings, ALERT_ADDRESS, "<x@practice.example>", "SecurityAlert", BREAK_GLASS_KIND)
    text = msg.as_string()
    assert "break-glass" in text and "/portal/console/" in text
    assert settings.notify_body.split("\n")[2] not in text  # not the office's new-message template


def test_C12_break_glass_minutes_is_a_checked_setting(tmp_path: Any) -> None:
    from fhirserver.config import SettingsError, load_settings
    from tests.support import test_env

    env = test_env(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", 8080)
    assert load_settings(env).break_glass_minutes == 60
    assert load_settings({**env, "BREAK_GLASS_MINUTES": "15"}).break_glass_minutes == 15
    for bad in ("0", "721", "an hour"):
        with pytest.raises(SettingsError, match="BREAK_GLASS_MINUTES"):
            load_settings({**env, "BREAK_GLASS_MINUTES": bad})


def test_C12_operators_review_and_revoke_grants_from_the_command_line(client: Any, world: World, cli_env: Any) -> None:
    from click.testing import CliRunner

    from fhirserver.cli import main

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), env=cli_env)

    assert world.glass(client).status_code == 200
    [grant] = _grants(world.app, world.user_ids["provider_b"])
    listed = run("break-glass", "list")
    assert listed.exit_code == 0, listed.output
    line = next(x for x in listed.output.splitlines() if x.startswith(grant.id))
    assert f"Patient/{world.patient_a}" in line and line.endswith("live") and "ZZREASON" not in listed.output
    reason = run("break-glass", "reason", grant.id)
    assert reason.exit_code == 0 and "ZZREASON" in reason.output
    assert run("break-glass", "reason", "nosuchgrant").exit_code == 1
    revoked = run("break-glass", "revoke", grant.id)
    assert revoked.exit_code == 0, revoked.output
    assert _reads(client, world, "provider_b") == CLOSED
    assert run("break-glass", "revoke", grant.id).exit_code == 1  # already ended
    assert grant.id not in run("break-glass", "list").output
    assert f"{grant.id}" in run("break-glass", "list", "--all").output
    reviews = [
        e
        for e in _audit_events(world.app, world.settings)
        if e.get("subtype", [{}])[0].get("code") == "break-glass-review"
    ]
    assert len(reviews) >= 4 and not any("ZZREASON" in json.dumps(e) for e in reviews)

"""The WebMail rules, read state and outbox, inside the repository's write transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fhirserver.core.errors import FhirError
from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.models import OutboxRow
from fhirserver.webmail import read_state
from tests.factories import make_practice, message_json, patient_json, practitioner_json
from tests.support import uid


def _outbox_count(session, comm_id: str) -> int:
    return session.execute(
        select(func.count()).select_from(OutboxRow).where(OutboxRow.subject_id == comm_id)
    ).scalar_one()


def test_provider_to_patient_stamps_and_queues_one_notification(db_session, settings):
    p = make_practice(db_session, settings)
    repo = Repository(db_session, settings, p.provider)
    msg = message_json(p.practitioner_ref, p.patient_ref, status="in-progress")
    stored = repo.create("Communication", msg)
    data = stored.json()
    assert data["status"] == "completed" and data["sent"]
    assert data["subject"] == {"reference": p.patient_ref}
    db_session.commit()
    rows = db_session.execute(select(OutboxRow).where(OutboxRow.subject_id == stored.res_id)).scalars().all()
    assert [(r.recipient_ref, r.status) for r in rows] == [(p.patient_ref, "pending")]
    assert rows[0].message_id.startswith("<webmail-")


def test_outbox_row_rolls_back_with_the_message(db_session, settings):
    p = make_practice(db_session, settings)
    repo = Repository(db_session, settings, p.provider)
    stored = repo.create("Communication", message_json(p.practitioner_ref, p.patient_ref))
    db_session.rollback()
    assert _outbox_count(db_session, stored.res_id) == 0


@pytest.mark.parametrize(
    "field,expr", [("topic", "Communication.topic.text"), ("payload", "Communication.payload.contentString")]
)
def test_subject_and_body_required(db_session, settings, field, expr):
    p = make_practice(db_session, settings)
    msg = message_json(p.practitioner_ref, p.patient_ref)
    msg[field] = {"text": "  "} if field == "topic" else [{"contentString": "   "}]
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, p.provider).create("Communication", msg)
    assert exc.value.status == 422
    assert exc.value.issues[0].expression == [expr]


def test_forged_sender_is_403(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, a.patient).create(
            "Communication", message_json(b.patient_ref, b.practitioner_ref)
        )
    assert exc.value.status == 403
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, a.provider).create(
            "Communication", message_json(b.practitioner_ref, a.patient_ref)
        )
    assert exc.value.status == 403


def test_forged_subject_is_403(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    msg = message_json(a.patient_ref, a.practitioner_ref, subject=b.patient_ref)
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, a.patient).create("Communication", msg)
    assert exc.value.status == 403


def test_patient_writes_only_to_primary_provider(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    repo = Repository(db_session, settings, a.patient)
    with pytest.raises(FhirError) as exc:
        repo.create("Communication", message_json(a.patient_ref, b.practitioner_ref))
    assert exc.value.status == 422
    stored = repo.create("Communication", message_json(a.patient_ref, a.practitioner_ref))
    assert stored.json()["subject"] == {"reference": a.patient_ref}
    db_session.commit()
    # Patient -> provider mail is not emailed to anyone.
    assert _outbox_count(db_session, stored.res_id) == 0


def test_provider_must_be_primary_provider(db_session, settings):
    """Defect 12: another provider's patient is answered exactly like a patient that does not exist."""
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    answers = []
    for target in (b.patient_ref, f"Patient/nobody{uid()}"):
        with pytest.raises(FhirError) as exc:
            Repository(db_session, settings, a.provider).create(
                "Communication", message_json(a.practitioner_ref, target)
            )
        db_session.rollback()
        answers.append((exc.value.status, exc.value.to_operation_outcome()))
    assert answers[0] == answers[1] and answers[0][0] == 422


def test_patient_without_email_or_portal_access_is_named(db_session, settings):
    p = make_practice(db_session, settings, email=False, portal=False)
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, p.provider).create(
            "Communication", message_json(p.practitioner_ref, p.patient_ref)
        )
    assert exc.value.status == 422
    text = " ".join(i.diagnostics for i in exc.value.issues)
    assert "email" in text and "portal access" in text


def test_any_primary_provider_may_send(db_session, settings):
    p = make_practice(db_session, settings)
    from smart_auth import accounts
    from tests.factories import PROVIDER_SCOPE, Principal, ScopeSet

    repo = Repository(db_session, settings, system_principal("tests"))
    second = repo.create("Practitioner", practitioner_json(family=f"Second{uid()}"))
    patient = repo.read("Patient", p.patient_id).json()
    patient["generalPractitioner"].append({"reference": f"Practitioner/{second.res_id}"})
    repo.update("Patient", p.patient_id, patient)
    user = accounts.create_user(
        db_session,
        username=f"second{uid()}",
        password="correct horse battery",
        role="provider",
        fhir_user=f"Practitioner/{second.res_id}",
    )
    db_session.commit()
    principal = Principal(
        role="provider",
        scopes=ScopeSet.parse(PROVIDER_SCOPE),
        user_id=user.id,
        fhir_user=f"Practitioner/{second.res_id}",
    )
    stored = Repository(db_session, settings, principal).create(
        "Communication", message_json(f"Practitioner/{second.res_id}", p.patient_ref)
    )
    assert stored.json()["sender"]["reference"] == f"Practitioner/{second.res_id}"


def test_reply_threads_to_first_message(db_session, settings):
    p = make_practice(db_session, settings)
    first = Repository(db_session, settings, p.provider).create(
        "Communication", message_json(p.practitioner_ref, p.patient_ref, topic="Results")
    )
    reply = Repository(db_session, settings, p.patient).create(
        "Communication",
        message_json(
            p.patient_ref,
            p.practitioner_ref,
            topic="RE: Results",
            inResponseTo=[{"reference": f"Communication/{first.res_id}"}],
        ),
    )
    assert reply.json()["partOf"] == [{"reference": f"Communication/{first.res_id}"}]
    second = Repository(db_session, settings, p.provider).create(
        "Communication",
        message_json(
            p.practitioner_ref,
            p.patient_ref,
            topic="RE: RE: Results",
            inResponseTo=[{"reference": f"Communication/{reply.res_id}"}],
        ),
    )
    assert second.json()["partOf"] == [{"reference": f"Communication/{first.res_id}"}]


def test_reply_to_unknown_or_foreign_message_is_422(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    foreign = Repository(db_session, settings, b.provider).create(
        "Communication", message_json(b.practitioner_ref, b.patient_ref)
    )
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, a.patient).create(
            "Communication",
            message_json(
                a.patient_ref, a.practitioner_ref, inResponseTo=[{"reference": f"Communication/{foreign.res_id}"}]
            ),
        )
    assert exc.value.status == 422


def test_sent_message_cannot_change_or_be_deleted(db_session, settings):
    p = make_practice(db_session, settings)
    repo = Repository(db_session, settings, p.provider)
    stored = repo.create("Communication", message_json(p.practitioner_ref, p.patient_ref))
    with pytest.raises(FhirError) as exc:
        repo.update("Communication", stored.res_id, stored.json())
    assert exc.value.status == 405
    with pytest.raises(FhirError) as exc:
        repo.delete("Communication", stored.res_id)
    assert exc.value.status == 405


def test_practitioner_to_practitioner(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    stored = Repository(db_session, settings, a.provider).create(
        "Communication", message_json(a.practitioner_ref, b.practitioner_ref)
    )
    db_session.commit()
    assert "subject" not in stored.json()
    assert Repository(db_session, settings, b.provider).read("Communication", stored.res_id)
    with pytest.raises(FhirError):
        Repository(db_session, settings, b.patient).read("Communication", stored.res_id)
    assert _outbox_count(db_session, stored.res_id) == 0


def test_unread_count_and_read_receipts(db_session, settings):
    p = make_practice(db_session, settings)
    repo = Repository(db_session, settings, p.patient)
    before = read_state.unread_count(db_session, p.provider_user_id, [p.practitioner_ref])
    m1 = repo.create("Communication", message_json(p.patient_ref, p.practitioner_ref))
    m2 = repo.create("Communication", message_json(p.patient_ref, p.practitioner_ref))
    db_session.commit()
    assert read_state.unread_count(db_session, p.provider_user_id, [p.practitioner_ref]) == before + 2
    read_state.mark_read(db_session, m1.res_id, p.provider_user_id, p.practitioner_ref)
    read_state.mark_read(db_session, m1.res_id, p.provider_user_id, p.practitioner_ref)  # idempotent
    db_session.commit()
    assert read_state.unread_count(db_session, p.provider_user_id, [p.practitioner_ref]) == before + 1
    receipts = read_state.read_receipts(db_session, p.patient_user_id, [m1.res_id, m2.res_id])
    assert receipts == {m1.res_id: (False, True), m2.res_id: (False, False)}
    read_state.mark_unread(db_session, m1.res_id, p.provider_user_id)
    db_session.commit()
    assert read_state.unread_count(db_session, p.provider_user_id, [p.practitioner_ref]) == before + 2


def test_provider_contact_requires_demographics(db_session, settings):
    p = make_practice(db_session, settings)
    tag = {"system": "http://fhir-webmail.example/CodeSystem/patient-tag", "code": "provider-contact"}
    incomplete = {
        "resourceType": "Patient",
        "meta": {"tag": [tag]},
        "name": [{"family": "Lee"}],
        "generalPractitioner": [{"reference": p.practitioner_ref}],
    }
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, p.provider).create("Patient", incomplete)
    assert exc.value.status == 422
    named = {e for i in exc.value.issues for e in i.expression or []}
    assert {"Patient.name.given", "Patient.birthDate", "Patient.address"} <= named
    complete = patient_json([p.practitioner_ref], meta={"tag": [tag]})
    assert Repository(db_session, settings, p.provider).create("Patient", complete)
    # Ordinary patients keep FHIR's own rules: no email needed.
    assert Repository(db_session, settings, p.provider).create(
        "Patient", patient_json([p.practitioner_ref], email=False)
    )


def test_co_provider_cannot_send_as_the_other_primary_provider(db_session, settings):
    """Both are the patient's primary providers, so only the sender check stands between them."""
    from smart_auth import accounts
    from tests.factories import PROVIDER_SCOPE, Principal, ScopeSet

    p = make_practice(db_session, settings)
    repo = Repository(db_session, settings, system_principal("tests"))
    second = repo.create("Practitioner", practitioner_json(family=f"Second{uid()}"))
    patient = repo.read("Patient", p.patient_id).json()
    patient["generalPractitioner"].append({"reference": f"Practitioner/{second.res_id}"})
    repo.update("Patient", p.patient_id, patient)
    user = accounts.create_user(
        db_session,
        username=f"co{uid()}",
        password="correct horse battery staple",
        role="provider",
        fhir_user=f"Practitioner/{second.res_id}",
        settings=settings,
    )
    db_session.commit()
    principal = Principal(
        role="provider",
        scopes=ScopeSet.parse(PROVIDER_SCOPE),
        user_id=user.id,
        fhir_user=f"Practitioner/{second.res_id}",
    )
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, principal).create(
            "Communication", message_json(p.practitioner_ref, p.patient_ref)
        )
    assert exc.value.status == 403

"""The Flask-free FHIR core over a real database (runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fhirserver.core.errors import FhirError
from fhirserver.core.principal import Principal, system_principal
from fhirserver.core.repository import Repository
from fhirserver.core.scopes import ScopeSet
from fhirserver.models import IdxReference, IdxString, ResourceRow, ResourceVersionRow
from tests.factories import make_practice, message_json, patient_json, practitioner_json
from tests.support import uid


@pytest.fixture()
def repo(db_session, settings):
    return Repository(db_session, settings, system_principal("tests"))


def test_create_read_update_history(repo, db_session):
    created = repo.create("Practitioner", practitioner_json())
    assert created.version_id == 1
    read = repo.read("Practitioner", created.res_id)
    assert read.raw == created.raw
    assert read.json()["meta"]["versionId"] == "1"

    body = read.json()
    body["name"][0]["family"] = "Changed"
    updated, was_created = repo.update("Practitioner", created.res_id, body, if_match='W/"1"')
    assert (updated.version_id, was_created) == (2, False)
    assert repo.vread("Practitioner", created.res_id, "1").json()["name"][0]["family"] == "Okafor"
    assert [v.version_id for v in repo.history("Practitioner", created.res_id)] == [2, 1]
    db_session.commit()


def test_if_match_mismatch_is_412_and_changes_nothing(repo, db_session):
    created = repo.create("Practitioner", practitioner_json())
    db_session.commit()
    body = created.json()
    body["name"][0]["family"] = "Other"
    with pytest.raises(FhirError) as exc:
        repo.update("Practitioner", created.res_id, body, if_match='W/"7"')
    assert exc.value.status == 412
    db_session.rollback()
    assert repo.read("Practitioner", created.res_id).json()["name"][0]["family"] == "Okafor"


def test_update_creates_with_client_id(repo, db_session):
    rid = f"p-{uid()}"
    stored, created = repo.update("Practitioner", rid, {**practitioner_json(), "id": rid})
    assert created and stored.res_id == rid


def test_delete_then_read_is_410_and_history_keeps_versions(repo, db_session):
    created = repo.create("Organization", {"resourceType": "Organization", "name": "Clinic"})
    repo.delete("Organization", created.res_id)
    with pytest.raises(FhirError) as exc:
        repo.read("Organization", created.res_id)
    assert exc.value.status == 410
    history = repo.history("Organization", created.res_id)
    assert [v.deleted for v in history] == [True, False]


def test_validation_errors_carry_expression(repo):
    with pytest.raises(FhirError) as exc:
        repo.create("Patient", {"resourceType": "Patient", "birthDate": "1980-13-45", "bogus": 1})
    assert exc.value.status == 400
    expressions = {e for i in exc.value.issues for e in (i.expression or [])}
    assert {"Patient.birthDate", "Patient.bogus"} <= expressions


def test_required_binding_checked(repo):
    with pytest.raises(FhirError) as exc:
        repo.create("Patient", {"resourceType": "Patient", "gender": "bogus"})
    assert exc.value.status == 400
    assert exc.value.issues[0].expression == ["Patient.gender"]


def test_wrong_resource_type_and_bad_json(repo):
    with pytest.raises(FhirError) as exc:
        repo.create("Patient", {"resourceType": "Practitioner"})
    assert exc.value.status == 400
    with pytest.raises(FhirError) as exc:
        repo.create("Patient", b"{not json")
    assert exc.value.status == 400
    with pytest.raises(FhirError) as exc:
        repo.create("Observation", {"resourceType": "Observation"})
    assert exc.value.status == 404


def test_communication_encrypted_at_rest(db_session, settings):
    practice = make_practice(db_session, settings)
    sentinel = f"ZZSENTINEL{uid()}"
    repo = Repository(db_session, settings, practice.provider)
    stored = repo.create(
        "Communication",
        message_json(practice.practitioner_ref, practice.patient_ref, topic=f"T {sentinel}", body=f"B {sentinel}"),
    )
    db_session.commit()
    assert sentinel in stored.raw.decode()
    raw_rows = [
        r.content for r in db_session.execute(select(ResourceRow).where(ResourceRow.res_id == stored.res_id)).scalars()
    ]
    raw_rows += [
        r.content
        for r in db_session.execute(
            select(ResourceVersionRow).where(ResourceVersionRow.res_id == stored.res_id)
        ).scalars()
    ]
    assert raw_rows and all(sentinel.encode() not in (c or b"") for c in raw_rows)
    strings = db_session.execute(select(IdxString.value).where(IdxString.res_id == stored.res_id)).scalars()
    assert all(sentinel.lower() not in s for s in strings)
    refs = set(db_session.execute(select(IdxReference.param).where(IdxReference.res_id == stored.res_id)).scalars())
    assert {"sender", "recipient", "subject"} <= refs
    # And the read decrypts.
    assert sentinel in repo.read("Communication", stored.res_id).json()["payload"][0]["contentString"]


def test_patient_sees_only_own_records(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    repo_a = Repository(db_session, settings, a.patient)
    assert repo_a.read("Patient", a.patient_id).res_id == a.patient_id
    with pytest.raises(FhirError) as exc:
        repo_a.read("Patient", b.patient_id)
    assert exc.value.status == 404
    # The directory is readable.
    assert repo_a.read("Practitioner", b.practitioner_id)


def test_patient_cannot_reassign_their_primary_provider(db_session, settings):
    """Even with write scopes: else a patient could make any provider theirs and write to them."""
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    patient = Principal(
        role="patient",
        scopes=ScopeSet.parse("patient/*.cruds"),
        user_id=a.patient_user_id,
        fhir_user=a.patient_ref,
        patient=a.patient_id,
    )
    repo = Repository(db_session, settings, patient)
    me = repo.read("Patient", a.patient_id).json()
    me["generalPractitioner"] = [{"reference": b.practitioner_ref}]
    with pytest.raises(FhirError) as exc:
        repo.update("Patient", a.patient_id, me)
    assert exc.value.status == 403
    db_session.rollback()
    with pytest.raises(FhirError) as exc:
        repo.create("Communication", message_json(a.patient_ref, b.practitioner_ref))
    assert exc.value.status == 422


def test_provider_sees_own_patients_only(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    repo_a = Repository(db_session, settings, a.provider)
    assert repo_a.read("Patient", a.patient_id)
    with pytest.raises(FhirError) as exc:
        repo_a.read("Patient", b.patient_id)
    assert exc.value.status == 404
    page = repo_a.search("Patient", [("general-practitioner", b.practitioner_ref)])
    assert page.rows == []


def test_admin_gets_no_phi_and_auditor_only_audit(db_session, settings):
    a = make_practice(db_session, settings)
    admin = Principal(role="admin", scopes=ScopeSet.parse("user/*.cruds"), user_id="admin")
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, admin).read("Patient", a.patient_id)
    assert exc.value.status == 403
    auditor = Principal(role="auditor", scopes=ScopeSet.parse("user/AuditEvent.rs"), user_id="aud")
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, auditor).read("Patient", a.patient_id)
    assert exc.value.status == 403
    with pytest.raises(FhirError) as exc:
        Repository(db_session, settings, a.provider).search("AuditEvent", [])
    assert exc.value.status == 403


def test_missing_scope_is_403(db_session, settings):
    a = make_practice(db_session, settings)
    reader = Principal(
        role="provider",
        scopes=ScopeSet.parse("user/Patient.r"),
        user_id=a.provider_user_id,
        fhir_user=a.practitioner_ref,
    )
    repo = Repository(db_session, settings, reader)
    assert repo.read("Patient", a.patient_id)
    with pytest.raises(FhirError) as exc:
        repo.search("Patient", [])
    assert exc.value.status == 403
    with pytest.raises(FhirError) as exc:
        repo.create("Patient", patient_json([a.practitioner_ref]))
    assert exc.value.status == 403


def test_provider_cannot_create_patient_outside_own_care(db_session, settings):
    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    repo = Repository(db_session, settings, a.provider)
    with pytest.raises(FhirError) as exc:
        repo.create("Patient", patient_json([b.practitioner_ref]))
    assert exc.value.status == 403


def test_staff_see_their_providers_patients_and_cannot_send(db_session, settings):
    from smart_auth import accounts
    from tests.factories import PROVIDER_SCOPE, message_json

    a = make_practice(db_session, settings)
    b = make_practice(db_session, settings)
    Repository(db_session, settings, a.patient).create(
        "Communication", message_json(a.patient_ref, a.practitioner_ref, topic="for the office")
    )
    user = accounts.create_user(
        db_session,
        username=f"staff{uid()}",
        password="correct horse battery staple",
        role="staff",
        staff_of=[a.practitioner_ref],
        settings=settings,
    )
    db_session.commit()
    staff = Principal(
        role="staff", scopes=ScopeSet.parse(PROVIDER_SCOPE), user_id=user.id, staff_of=(a.practitioner_ref,)
    )
    repo = Repository(db_session, settings, staff)
    assert repo.read("Patient", a.patient_id)
    with pytest.raises(FhirError) as exc:
        repo.read("Patient", b.patient_id)
    assert exc.value.status == 404
    inbox = repo.search("Communication", [("recipient", a.practitioner_ref)])
    assert len(inbox.rows) == 1
    assert repo.search("Communication", [("recipient", b.practitioner_ref)]).rows == []
    with pytest.raises(FhirError) as exc:
        repo.create("Communication", message_json(a.practitioner_ref, a.patient_ref))
    assert exc.value.status == 403

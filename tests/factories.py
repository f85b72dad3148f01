"""Test data built through our own public functions (repository, accounts), unique per call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.principal import Principal, system_principal
from fhirserver.core.repository import Repository
from fhirserver.core.scopes import ScopeSet
from tests import totp
from tests.support import uid

CATEGORY = {"coding": [{"system": "http://fhir-webmail.example/CodeSystem/communication-category", "code": "webmail"}]}
PATIENT_SCOPE = "launch/patient patient/Patient.rs patient/Practitioner.rs patient/Communication.cruds"
PROVIDER_SCOPE = "user/Patient.cruds user/Practitioner.rs user/Organization.rs user/Communication.cruds"


def token_for(app: Any, settings: Settings, user_id: str, scope: str, patient: str | None = None) -> str:
    """A real access token of a grant of its own (as ``fhirserver token`` makes them)."""
    from fhirserver.extensions import db
    from smart_auth.accounts import get_user
    from smart_auth.grants import issue_token

    with app.app_context():
        user = get_user(db.session, user_id)
        token = issue_token(db.session, settings, user=user, client_id="tests", scope=scope, patient=patient)
        db.session.commit()
        db.session.remove()
        return token


def practitioner_json(family: str = "Okafor", given: str = "Ada") -> dict[str, Any]:
    return {"resourceType": "Practitioner", "name": [{"family": family, "given": [given]}]}


def patient_json(
    gp: list[str], *, email: bool = True, family: str = "Rivera", given: str = "Lena", **extra: Any
) -> dict[str, Any]:
    telecom = [{"system": "phone", "value": "555-0100"}]
    if email:
        telecom.append({"system": "email", "value": f"{given.lower()}.{uid()}@mail.example"})
    data = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "birthDate": "1980-04-02",
        "telecom": telecom,
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
        "generalPractitioner": [{"reference": r} for r in gp],
    }
    data.update(extra)
    return data


def message_json(
    sender: str,
    recipient: str,
    subject: str | None = None,
    *,
    topic: str = "Hello",
    body: str = "How are you?",
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [CATEGORY],
        "sender": {"reference": sender},
        "recipient": [{"reference": recipient}],
        "topic": {"text": topic},
        "payload": [{"contentString": body}],
    }
    if subject:
        data["subject"] = {"reference": subject}
    data.update(extra)
    return data


def make_patient(session: Session, settings: Settings, practitioner_ref: str, **extra: Any) -> str:
    """A Patient of ``practitioner_ref`` with full demographics and no portal account yet; its id."""
    repo = Repository(session, settings, system_principal("tests"))
    stored = repo.create("Patient", patient_json([practitioner_ref], family=f"New{uid()}", **extra))
    session.commit()
    return stored.res_id


@dataclass
class Practice:
    practitioner_id: str
    patient_id: str
    provider_user_id: str
    patient_user_id: str
    provider_username: str
    patient_username: str
    provider: Principal
    patient: Principal
    password: str = "correct horse battery staple"

    @property
    def practitioner_ref(self) -> str:
        return f"Practitioner/{self.practitioner_id}"

    @property
    def patient_ref(self) -> str:
        return f"Patient/{self.patient_id}"


def make_practice(session: Session, settings: Settings, *, portal: bool = True, email: bool = True) -> Practice:
    """One provider with one patient (email and portal access by default), and their user accounts."""
    from smart_auth import accounts

    repo = Repository(session, settings, system_principal("tests"))
    prac = repo.create("Practitioner", practitioner_json(family=f"Doc{uid()}"))
    pat = repo.create("Patient", patient_json([f"Practitioner/{prac.res_id}"], email=email, family=f"Pat{uid()}"))
    password = "correct horse battery staple"
    prov_user = accounts.create_user(
        session,
        username=f"dr{uid()}",
        password=password,
        role="provider",
        fhir_user=f"Practitioner/{prac.res_id}",
        display_name="Dr Test",
        settings=settings,
    )
    pat_username = f"pat{uid()}"
    pat_user = accounts.create_user(
        session,
        username=pat_username,
        password=password,
        role="patient",
        fhir_user=f"Patient/{pat.res_id}",
        display_name="Patient Test",
        settings=settings,
    )
    if not portal:
        pat_user.active = False
    totp.enrol(session, settings, prov_user)  # providers sign in with TOTP (tests/totp.py)
    session.commit()
    provider = Principal(
        role="provider",
        scopes=ScopeSet.parse(PROVIDER_SCOPE),
        user_id=prov_user.id,
        fhir_user=f"Practitioner/{prac.res_id}",
        client_id="tests",
    )
    patient = Principal(
        role="patient",
        scopes=ScopeSet.parse(PATIENT_SCOPE),
        user_id=pat_user.id,
        fhir_user=f"Patient/{pat.res_id}",
        client_id="tests",
        patient=pat.res_id,
    )
    return Practice(
        prac.res_id,
        pat.res_id,
        prov_user.id,
        pat_user.id,
        prov_user.username,
        pat_username,
        provider,
        patient,
        password,
    )

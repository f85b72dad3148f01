"""The WebMail profile of Communication: identifiers and small pure helpers (docs/webmail-profile.md)."""

from __future__ import annotations

from typing import Any

CANONICAL = "http://fhir-webmail.example"
CATEGORY_SYSTEM = f"{CANONICAL}/CodeSystem/communication-category"
CATEGORY_CODE = "webmail"
PATIENT_TAG_SYSTEM = f"{CANONICAL}/CodeSystem/patient-tag"
PROVIDER_CONTACT = "provider-contact"
READ_STATE_URL = f"{CANONICAL}/StructureDefinition/read-state"
NOTIFY_KIND = "webmail-notify"

CATEGORY = {"coding": [{"system": CATEGORY_SYSTEM, "code": CATEGORY_CODE, "display": "Secure WebMail"}]}


def refs(data: dict[str, Any], key: str) -> list[str]:
    """The literal references of an element that holds one Reference or a list of them."""
    value = data.get(key)
    items = value if isinstance(value, list) else [value] if value else []
    return [i["reference"] for i in items if isinstance(i, dict) and isinstance(i.get("reference"), str)]


def split_ref(ref: str) -> tuple[str, str]:
    rtype, _, rid = ref.partition("/")
    return rtype, rid


def has_category(data: dict[str, Any]) -> bool:
    for cat in data.get("category") or []:
        for coding in (cat or {}).get("coding") or []:
            if coding.get("system") == CATEGORY_SYSTEM and coding.get("code") == CATEGORY_CODE:
                return True
    return False


def is_provider_contact(patient: dict[str, Any]) -> bool:
    return any(
        t.get("system") == PATIENT_TAG_SYSTEM and t.get("code") == PROVIDER_CONTACT
        for t in (patient.get("meta") or {}).get("tag") or []
    )


def telecom(patient: dict[str, Any], system: str) -> str | None:
    for t in patient.get("telecom") or []:
        if t.get("system") == system and isinstance(t.get("value"), str) and t["value"].strip():
            return str(t["value"])
    return None


def first_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or []:
        given = name.get("given") or []
        if given and isinstance(given[0], str):
            return given[0]
    return ""


def missing_demographics(patient: dict[str, Any]) -> list[tuple[str, str]]:
    """What a portal account (and a provider-contact record) needs: (label, FHIRPath) of each gap."""
    missing = []
    names = patient.get("name") or []
    if not any(n.get("given") for n in names):
        missing.append(("first name", "Patient.name.given"))
    if not any(n.get("family") for n in names):
        missing.append(("last name", "Patient.name.family"))
    if not patient.get("birthDate"):
        missing.append(("birth date", "Patient.birthDate"))
    if not telecom(patient, "phone"):
        missing.append(("phone", "Patient.telecom.where(system='phone')"))
    if not telecom(patient, "email"):
        missing.append(("email", "Patient.telecom.where(system='email')"))
    if not any(a.get("line") or a.get("city") or a.get("postalCode") for a in patient.get("address") or []):
        missing.append(("address", "Patient.address"))
    return missing

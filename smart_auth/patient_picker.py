"""The patients a provider (or a provider's staff) may choose as launch context.

A provider's patients are the Patients whose ``generalPractitioner`` is their
Practitioner, found through the search index (``idx_reference``, param
``general-practitioner``); staff see the patients of the providers they work for.
Names come from the stored Patient JSON (Patient is stored unencrypted). The same
query decides both what the picker lists and what a submitted choice may be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhirserver.models import IdxReference, ResourceRow
from smart_auth import accounts
from smart_auth.models import UserAccount

MAX_LISTED = 500


@dataclass(frozen=True)
class PatientChoice:
    id: str
    name: str
    birth_date: str
    sort_key: str = ""


def practitioners_of(session: Session, user: UserAccount) -> list[str]:
    """Practitioner ids whose patients ``user`` may pick."""
    refs: list[str] = []
    if user.role == "provider" and user.fhir_user and user.fhir_user.startswith("Practitioner/"):
        refs.append(user.fhir_user)
    elif user.role == "staff":
        refs.extend(accounts.staff_providers(session, user.id))
    return [r.split("/", 1)[1] for r in refs if r.startswith("Practitioner/")]


def _names(resource: dict[str, Any]) -> tuple[str, str]:
    """(display name, sort key): "Given Family", sorted by family name then given names."""
    names = resource.get("name") or []
    if not isinstance(names, list):
        return "", ""
    for use in ("official", "usual", None):
        for n in names:
            if not isinstance(n, dict) or (use and n.get("use") != use):
                continue
            given = " ".join(str(g) for g in (n.get("given") or []) if isinstance(g, str))
            family = str(n.get("family") or "")
            full = str(n.get("text") or "") or f"{given} {family}".strip()
            if full:
                return full, f"{family} {given}".strip().casefold() or full.casefold()
    return "", ""


def patients_for(session: Session, user: UserAccount) -> list[PatientChoice]:
    """The patients ``user`` may put in context, sorted by name."""
    practitioner_ids = practitioners_of(session, user)
    if not practitioner_ids:
        return []
    ids = (
        select(IdxReference.res_id)
        .where(
            IdxReference.res_type == "Patient",
            IdxReference.param == "general-practitioner",
            IdxReference.target_type == "Practitioner",
            IdxReference.target_id.in_(practitioner_ids),
        )
        .distinct()
    )
    rows = session.execute(
        select(ResourceRow.res_id, ResourceRow.content, ResourceRow.key_id)
        .where(
            ResourceRow.res_type == "Patient",
            ResourceRow.deleted.is_(False),
            ResourceRow.res_id.in_(ids),
        )
        .limit(MAX_LISTED)
    )
    out: list[PatientChoice] = []
    for res_id, content, key_id in rows:
        resource: dict[str, Any] = {}
        if content and not key_id:
            try:
                loaded = json.loads(content)
                resource = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                resource = {}
        name, key = _names(resource)
        out.append(
            PatientChoice(
                id=res_id,
                name=name or f"Patient {res_id}",
                birth_date=str(resource.get("birthDate") or ""),
                sort_key=key or res_id,
            )
        )
    out.sort(key=lambda p: (p.sort_key, p.birth_date, p.id))
    return out


def may_pick(session: Session, user: UserAccount, patient_id: str) -> bool:
    return any(p.id == patient_id for p in patients_for(session, user))

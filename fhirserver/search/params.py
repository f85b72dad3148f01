"""The search parameters of each resource type, as data (``REGISTRY[res_type][name]``).

Definitions follow the FHIR R4 SearchParameter resources (their ``expression``),
written in the path language of :mod:`fhirserver.search.paths`. A parameter with a
``column`` is answered from that column of the ``resource`` table (``_id``,
``_lastUpdated``) and has no index rows.

Adding a parameter is adding a line here: indexing and querying are generic over
the parameter *type*. ``check_registry`` runs at import so that a bad path, an unknown
type or a parameter over an encrypted element fails loudly, not silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fhirserver.search.paths import compile_path

TYPES = frozenset({"string", "token", "reference", "date"})

# Elements stored encrypted at rest: indexing them would leak them in clear text.
ENCRYPTED_ELEMENTS: Mapping[str, frozenset[str]] = {"Communication": frozenset({"topic", "payload"})}


@dataclass(frozen=True)
class SearchParam:
    """One search parameter: its name, type, the element paths it indexes and, for
    references, the resource types it may point at (empty: any type)."""

    name: str
    type: str
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    column: str | None = None

    @property
    def sortable(self) -> bool:
        """Sorting is supported on dates and on the resource columns."""
        return self.column is not None or self.type == "date"


ID = SearchParam("_id", "token", (), column="res_id")
LAST_UPDATED = SearchParam("_lastUpdated", "date", (), column="last_updated")
COMMON: dict[str, SearchParam] = {p.name: p for p in (ID, LAST_UPDATED)}

HUMAN_NAME = tuple(f"name.{part}" for part in ("family", "given", "text", "prefix", "suffix"))
SENDER_TYPES = (
    "Device",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "HealthcareService",
)
RECIPIENT_TYPES = (*SENDER_TYPES, "Group", "CareTeam")


def _table(*params: SearchParam) -> dict[str, SearchParam]:
    return {**COMMON, **{p.name: p for p in params}}


REGISTRY: dict[str, dict[str, SearchParam]] = {
    "Patient": _table(
        SearchParam("name", "string", HUMAN_NAME),
        SearchParam("family", "string", ("name.family",)),
        SearchParam("given", "string", ("name.given",)),
        SearchParam("birthdate", "date", ("birthDate",)),
        SearchParam("email", "token", ("telecom(system=email).value",)),
        SearchParam("identifier", "token", ("identifier",)),
        SearchParam(
            "general-practitioner",
            "reference",
            ("generalPractitioner",),
            ("Organization", "Practitioner", "PractitionerRole"),
        ),
    ),
    "Practitioner": _table(
        SearchParam("name", "string", HUMAN_NAME),
        SearchParam("identifier", "token", ("identifier",)),
    ),
    "Organization": _table(
        SearchParam("name", "string", ("name", "alias")),
        SearchParam("identifier", "token", ("identifier",)),
    ),
    "Communication": _table(
        SearchParam("sender", "reference", ("sender",), SENDER_TYPES),
        SearchParam("recipient", "reference", ("recipient",), RECIPIENT_TYPES),
        SearchParam("subject", "reference", ("subject",), ("Group", "Patient")),
        SearchParam("patient", "reference", ("subject",), ("Patient",)),
        SearchParam("part-of", "reference", ("partOf",)),
        SearchParam("category", "token", ("category",)),
        SearchParam("status", "token", ("status",)),
        SearchParam("sent", "date", ("sent",)),
    ),
    # AuditEvents are searched over the columns of the audit table (fhirserver.core.audit_log),
    # not index rows; the definitions here validate the query and follow R4.
    "AuditEvent": _table(
        SearchParam("date", "date", ("recorded",)),
        SearchParam("outcome", "token", ("outcome",)),
        SearchParam("patient", "reference", ("agent.who", "entity.what"), ("Patient",)),
        SearchParam("action", "token", ("action",)),
        SearchParam("type", "token", ("type",)),
        SearchParam("subtype", "token", ("subtype",)),
        SearchParam("agent", "reference", ("agent.who",)),
        SearchParam("entity", "reference", ("entity.what",)),
    ),
}


def params_for(res_type: str) -> Mapping[str, SearchParam]:
    """The parameters of ``res_type``; types without definitions still have the common ones."""
    return REGISTRY.get(res_type, COMMON)


def indexed_params(res_type: str) -> list[SearchParam]:
    """The parameters of ``res_type`` that have index rows (not served from a column)."""
    return [p for p in params_for(res_type).values() if p.column is None]


def check_registry(registry: Mapping[str, Mapping[str, SearchParam]]) -> None:
    """Reject definitions that cannot work or that would index encrypted elements."""
    for res_type, table in registry.items():
        forbidden = ENCRYPTED_ELEMENTS.get(res_type, frozenset())
        for name, p in table.items():
            if name != p.name or p.type not in TYPES:
                raise ValueError(f"{res_type}.{name}: bad definition")
            if (p.column is None) == (not p.paths):
                raise ValueError(f"{res_type}.{name}: needs either paths or a column")
            for path in p.paths:
                first = compile_path(path)[0].name
                if first in forbidden:
                    raise ValueError(f"{res_type}.{name}: {first} is encrypted and must never be indexed")


check_registry(REGISTRY)

"""One descriptor per served resource type: the facts every other module derives from.

Validation (which types exist), access (each type's policy and compartment membership),
encryption at rest, granular scope filters, the interactions a type refuses, and the
CapabilityStatement all read :data:`TYPES`, so that a type's facts live in one place and
cannot disagree. Access is closed by default: a type is served only with an explicit
:class:`Policy`, and :func:`descriptor` refuses a type that has none (an unknown type is a
404 before any query; tests/fhir/test_resource_types.py fails for a served type without one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from types import MappingProxyType


class Policy(StrEnum):
    """Who may reach the resources of a type (docs/security.md, "Access policies")."""

    # PHI that belongs to patients: a patient reaches their own compartment; a provider (and
    # their staff) the compartments of the patients whose primary provider they are.
    COMPARTMENT = "compartment"
    # Shared, non-PHI data (the practice's providers, organizations): any signed-in user reads
    # it; administrators and system clients write it.
    DIRECTORY = "directory"
    # Everything else: system principals only, as their system/ scopes name it.
    SYSTEM_ONLY = "system-only"
    # AuditEvent alone: auditors read it; nobody writes it through the API.
    AUDIT = "audit"


@dataclass(frozen=True)
class ResourceType:
    """What the server knows about one served type."""

    name: str
    policy: Policy
    # Encrypted at rest as whole JSON (index rows are extracted before encryption).
    encrypted: bool = False
    # SMART 2 granular scopes (``patient/Communication.rs?category=system|code``): the token
    # search parameters a scope on this type may filter by. A type with the ``category`` or
    # ``code`` token parameters SMART names lists them; any other query in a scope is
    # ``invalid_scope``. Each must be a token parameter of the type in
    # ``fhirserver.search.params.REGISTRY`` (access answers a filter from its index rows).
    scope_filters: tuple[str, ...] = ()
    # Interactions the type refuses outright, with the reason (405).
    not_updatable: str | None = None
    not_deletable: str | None = None
    # For a compartment type whose resources also belong to the practitioners they name
    # (a provider's own messages): the reference parameters that name them.
    practitioner_params: tuple[str, ...] = ()

    @property
    def compartment_params(self) -> tuple[str, ...]:
        """The search parameters that place a resource of this type in a patient's compartment
        (the R4 Patient CompartmentDefinition); empty for a type outside it."""
        return patient_compartment().get(self.name, ())


@cache
def patient_compartment() -> MappingProxyType[str, tuple[str, ...]]:
    """The R4 Patient CompartmentDefinition: type -> the parameters that make a resource a member."""
    text = resources.files("fhirserver.core.definitions").joinpath("patient-compartment.json").read_text()
    members = json.loads(text)["members"]
    return MappingProxyType({t: tuple(params) for t, params in members.items()})


_SENT_WEBMAIL = "A sent message cannot be {} (retraction comes later)"

TYPES: MappingProxyType[str, ResourceType] = MappingProxyType(
    {
        t.name: t
        for t in (
            ResourceType("Patient", Policy.COMPARTMENT),
            ResourceType("Practitioner", Policy.DIRECTORY),
            ResourceType("Organization", Policy.DIRECTORY),
            ResourceType(
                "Communication",
                Policy.COMPARTMENT,
                encrypted=True,
                scope_filters=("category",),
                not_updatable=_SENT_WEBMAIL.format("changed"),
                not_deletable=_SENT_WEBMAIL.format("deleted"),
                practitioner_params=("sender", "recipient"),
            ),
            ResourceType("AuditEvent", Policy.AUDIT),
        )
    }
)


def descriptor(res_type: str) -> ResourceType:
    """The descriptor of a served type; KeyError for any other (callers answer 404 first)."""
    return TYPES[res_type]


def of_policy(policy: Policy) -> frozenset[str]:
    return frozenset(t.name for t in TYPES.values() if t.policy is policy)


# Views derived from the descriptors, for the modules that ask one question of every type.
SERVED_TYPES: tuple[str, ...] = tuple(TYPES)
NON_UPDATABLE: dict[str, str] = {t.name: t.not_updatable for t in TYPES.values() if t.not_updatable}
NON_DELETABLE: dict[str, str] = {t.name: t.not_deletable for t in TYPES.values() if t.not_deletable}
SCOPE_FILTERS: dict[str, tuple[str, ...]] = {t.name: t.scope_filters for t in TYPES.values()}
ENCRYPTED_TYPES: frozenset[str] = frozenset(t.name for t in TYPES.values() if t.encrypted)

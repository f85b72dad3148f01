"""One descriptor per served type, access closed by default (fhirserver.core.resource_types).

A served type without an explicit policy, a compartment type whose membership parameters are
not indexed, or a type whose policy access does not know, must fail here, never open a door.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType

import pytest
from sqlalchemy import false

from fhirserver.core import access, resource_types
from fhirserver.core.errors import FhirError
from fhirserver.core.principal import Principal
from fhirserver.core.resource_types import TYPES, Policy, ResourceType, patient_compartment
from fhirserver.core.scopes import ScopeSet
from fhirserver.search.params import REGISTRY

# The specification's definition files: beside the checkout (../shared), where a clone elsewhere
# (CI) finds them in the workplace, or where FHIR_R4_DEFINITIONS says.
_CANDIDATES = [
    os.environ.get("FHIR_R4_DEFINITIONS", ""),
    str(Path(__file__).resolve().parents[3] / "shared" / "reference" / "fhir-r4"),
    "/work/shared/reference/fhir-r4",
]
SPEC = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path(_CANDIDATES[1]))


def _patient(pid: str = "p1") -> Principal:
    return Principal(role="patient", scopes=ScopeSet.parse("patient/*.rs"), user_id="u1", fhir_user=f"Patient/{pid}")


def _provider() -> Principal:
    return Principal(role="provider", scopes=ScopeSet.parse("user/*.cruds"), user_id="u2", fhir_user="Practitioner/d1")


def test_every_served_type_has_an_explicit_policy_that_access_knows() -> None:
    assert tuple(TYPES) == resource_types.SERVED_TYPES
    known = access.PHI_TYPES | access.DIRECTORY_TYPES | access.AUDIT_TYPES | access.SYSTEM_ONLY_TYPES
    for name, t in TYPES.items():
        assert t.name == name and isinstance(t.policy, Policy), name
        assert name in known, f"{name}: access does not know its policy"
    assert set(access.AUDIT_TYPES) == {"AuditEvent"}


def test_compartment_types_are_in_the_r4_compartment_through_indexed_references() -> None:
    """Access matches compartment membership on index rows: each parameter must be indexed as a reference."""
    for t in TYPES.values():
        if t.policy is not Policy.COMPARTMENT:
            continue
        params = t.compartment_params
        assert params, f"{t.name} has the compartment policy but is not in the R4 Patient compartment"
        if t.name == "Patient":
            continue  # its own compartment, by id (access does not follow ``link``: own record only)
        for name in params:
            param = REGISTRY.get(t.name, {}).get(name)
            assert param is not None and param.type == "reference", f"{t.name}.{name} is not an indexed reference"
            assert not param.targets or "Patient" in param.targets, f"{t.name}.{name} cannot point at a Patient"
        for name in t.practitioner_params:
            assert REGISTRY[t.name][name].type == "reference"


def test_group_and_audit_event_keep_their_own_policies_although_the_compartment_names_them() -> None:
    assert "Group" in patient_compartment() and "AuditEvent" in patient_compartment()
    assert TYPES["AuditEvent"].policy is Policy.AUDIT
    assert "Group" not in TYPES or TYPES["Group"].policy is Policy.SYSTEM_ONLY


@pytest.mark.skipif(not SPEC.is_dir(), reason=f"the R4 definitions are not at {SPEC}")
def test_the_compartment_data_is_the_r4_compartment_definition() -> None:
    spec = json.loads((SPEC / "compartmentdefinition-patient.json").read_text())
    assert spec["version"] == "4.0.1"
    want = {r["code"]: tuple(r["param"]) for r in spec["resource"] if r.get("param")}
    assert dict(patient_compartment()) == want


@pytest.fixture()
def with_types(monkeypatch: pytest.MonkeyPatch):
    """Serve extra descriptors for one test (as a later type would be added)."""

    def add(*extra: ResourceType) -> None:
        merged = {**TYPES, **{t.name: t for t in extra}}
        monkeypatch.setattr(resource_types, "TYPES", MappingProxyType(merged))
        access._cached_conditions.cache_clear()

    yield add
    access._cached_conditions.cache_clear()


def test_a_compartment_type_added_later_confines_a_patient_to_their_compartment(with_types) -> None:
    """The hazard of a type that only joins the served list: a patient must not read every Observation."""
    with_types(ResourceType("Observation", Policy.COMPARTMENT))
    conds = access._role_conditions(_patient(), "Observation")
    assert conds and str(conds[0]) != str(false()), "no condition: every Observation would be readable"
    sql = str(conds[0].compile(compile_kwargs={"literal_binds": True}))
    assert "'Patient'" in sql and "'p1'" in sql and "subject" in sql and "performer" in sql
    provider = access._role_conditions(_provider(), "Observation")
    assert "general-practitioner" in str(provider[0].compile(compile_kwargs={"literal_binds": True}))


def test_a_type_outside_the_compartment_or_system_only_is_closed_to_users(with_types) -> None:
    with_types(
        ResourceType("Organization2", Policy.COMPARTMENT),  # not in the compartment: nothing, not everything
        ResourceType("Group", Policy.SYSTEM_ONLY),
    )
    assert [str(c) for c in access._role_conditions(_patient(), "Organization2")] == [str(false())]
    assert [str(c) for c in access._role_conditions(_provider(), "Organization2")] == [str(false())]
    assert [str(c) for c in access._role_conditions(_provider(), "Group")] == [str(false())]
    for who in (_patient(), _provider()):
        with pytest.raises(FhirError) as err:
            access.check_interaction(who, "Group", "r")
        assert err.value.status == 403
    system = Principal(role="system", scopes=ScopeSet.parse("system/Group.rs"), client_id="backend")
    access.check_interaction(system, "Group", "r")
    assert access._role_conditions(system, "Group") == []

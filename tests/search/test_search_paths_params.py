"""The path language and the parameter registry (pure, no database)."""

from __future__ import annotations

import pytest

from fhirserver.search.params import REGISTRY, SearchParam, check_registry, params_for
from fhirserver.search.paths import PathError, compile_path, evaluate
from fhirserver.search.types import HANDLERS

PATIENT = {
    "resourceType": "Patient",
    "name": [{"family": "Doe", "given": ["Jane", "J"]}, {"family": "Roe"}],
    "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "jane@x.example"}],
    "deceasedBoolean": False,
}


def test_dotted_paths_flatten_lists() -> None:
    assert evaluate(PATIENT, "name.family") == ["Doe", "Roe"]
    assert evaluate(PATIENT, "name.given") == ["Jane", "J"]


def test_where_filter_keeps_matching_items_only() -> None:
    assert evaluate(PATIENT, "telecom(system=email).value") == ["jane@x.example"]
    assert evaluate(PATIENT, "telecom(system=fax).value") == []


def test_choice_elements_and_missing_elements() -> None:
    assert evaluate(PATIENT, "deceased[x]") == [False]
    assert evaluate(PATIENT, "address.city") == []
    assert evaluate({"valueString": "a", "valueset": "no"}, "value[x]") == ["a"]


@pytest.mark.parametrize("bad", ["", "name..family", "name.", "Patient name", "a(b)", "a(=b)"])
def test_malformed_paths_are_rejected(bad: str) -> None:
    with pytest.raises(PathError):
        compile_path(bad)


def test_every_parameter_has_a_handler_and_valid_paths() -> None:
    for table in REGISTRY.values():
        for p in table.values():
            assert p.type in HANDLERS
            for path in p.paths:
                compile_path(path)


def test_no_parameter_reads_encrypted_communication_elements() -> None:
    for p in REGISTRY["Communication"].values():
        for path in p.paths:
            assert compile_path(path)[0].name not in ("topic", "payload")


@pytest.mark.parametrize("path", ["topic", "topic.text", "payload.contentString"])
def test_registry_check_refuses_parameters_over_encrypted_elements(path: str) -> None:
    bad = {"Communication": {"x": SearchParam("x", "string", (path,))}}
    with pytest.raises(ValueError, match="encrypted"):
        check_registry(bad)


def test_registry_check_refuses_unknown_types_and_mismatched_names() -> None:
    with pytest.raises(ValueError):
        check_registry({"Patient": {"x": SearchParam("x", "number", ("a",))}})
    with pytest.raises(ValueError):
        check_registry({"Patient": {"x": SearchParam("y", "string", ("a",))}})


def test_required_parameters_exist_with_their_types() -> None:
    expected = {
        "Patient": {
            "name": "string",
            "family": "string",
            "given": "string",
            "birthdate": "date",
            "email": "token",
            "identifier": "token",
            "general-practitioner": "reference",
            "_id": "token",
            "_lastUpdated": "date",
        },
        "Practitioner": {"name": "string", "identifier": "token", "_id": "token", "_lastUpdated": "date"},
        "Organization": {"name": "string", "identifier": "token", "_id": "token"},
        "Communication": {
            "sender": "reference",
            "recipient": "reference",
            "subject": "reference",
            "patient": "reference",
            "category": "token",
            "status": "token",
            "sent": "date",
            "part-of": "reference",
            "_id": "token",
            "_lastUpdated": "date",
        },
        "AuditEvent": {
            "date": "date",
            "patient": "reference",
            "outcome": "token",
            "action": "token",
            "agent": "reference",
            "entity": "reference",
        },
    }
    for res_type, names in expected.items():
        for name, ptype in names.items():
            assert params_for(res_type)[name].type == ptype, (res_type, name)
    assert params_for("Communication")["patient"].targets == ("Patient",)
    assert set(params_for("Patient")["general-practitioner"].targets) == {
        "Practitioner",
        "Organization",
        "PractitionerRole",
    }


def test_types_without_definitions_still_have_common_parameters() -> None:
    assert set(params_for("PractitionerRole")) == {"_id", "_lastUpdated"}

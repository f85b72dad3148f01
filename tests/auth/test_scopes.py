"""SMART scopes: v2 syntax, with v1 (``.read``/``.write``/``.*``) mapped onto v2 permissions."""

from __future__ import annotations

import pytest

from fhirserver.core.access import check_interaction
from fhirserver.core.errors import FhirError
from fhirserver.core.principal import Principal
from fhirserver.core.scopes import ScopeSet


def perms(scope: str, res_type: str = "Communication", context: str = "patient") -> str:
    """The v2 permission letters that ``scope`` grants on ``res_type`` in ``context``."""
    granted = ScopeSet.parse(scope)
    return "".join(p for p in "cruds" if granted.allows(res_type, p, context))


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("patient/Communication.read", "rs"),
        ("patient/Communication.write", "cud"),
        ("patient/Communication.*", "cruds"),
        ("patient/*.read", "rs"),
        ("patient/Communication.rs", "rs"),
        ("patient/Communication.cu", "cu"),
        ("patient/Communication.sr", ""),  # out of order: malformed, grants nothing
        ("patient/Communication.readwrite", ""),
        ("patient/Patient.read", ""),  # another type
        ("user/Communication.read", ""),  # another context
    ],
)
def test_v1_and_v2_permissions(scope: str, expected: str) -> None:
    assert perms(scope) == expected


def test_a_v1_read_scope_reads_and_searches_but_never_writes() -> None:
    p = Principal(
        role="patient",
        scopes=ScopeSet.parse("launch/patient patient/*.read"),
        user_id="u",
        fhir_user="Patient/p1",
        patient="p1",
    )
    check_interaction(p, "Communication", "r")
    check_interaction(p, "Communication", "s")
    for perm in "cud":
        with pytest.raises(FhirError) as exc:
            check_interaction(p, "Communication", perm)
        assert exc.value.status == 403

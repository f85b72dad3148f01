"""The one error type of the FHIR core, and its OperationOutcome form.

Every failure (bad JSON, validation, authorization, rules, conflicts) is raised as a
FhirError; the web layer turns it into an OperationOutcome response in one place.
Diagnostics are written for the API user and must never echo PHI or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Issue:
    code: str
    diagnostics: str
    expression: list[str] | None = None
    severity: str = "error"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = self.expression
        return out


@dataclass
class FhirError(Exception):
    status: int
    code: str
    diagnostics: str
    expression: list[str] | None = None
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)
        if not self.issues:
            self.issues = [Issue(self.code, self.diagnostics, self.expression)]

    def to_operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def not_found(res_type: str, res_id: str) -> FhirError:
    # The same answer whether the resource does not exist or lies outside the grant.
    return FhirError(404, "not-found", f"{res_type}/{res_id} is not known")


def unauthorized(error: str | None = None) -> FhirError:
    """401 with the RFC 6750 challenge (``error``: ``invalid_request``, ``invalid_token``)."""
    challenge = 'Bearer realm="fhir"'
    if error:
        challenge += f', error="{error}"'
    exc = FhirError(401, "login", "A valid access token is required")
    exc.headers["WWW-Authenticate"] = challenge
    return exc


def forbidden(diagnostics: str) -> FhirError:
    return FhirError(403, "forbidden", diagnostics)


def invalid(diagnostics: str, expression: list[str] | None = None, status: int = 400) -> FhirError:
    return FhirError(status, "invalid", diagnostics, expression)


def business_rule(diagnostics: str, expression: list[str] | None = None) -> FhirError:
    return FhirError(422, "business-rule", diagnostics, expression)

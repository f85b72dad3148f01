"""Parse and validate incoming FHIR JSON with the fhir.resources R4B models.

R4 (4.0.1) JSON of the types we serve passes the R4B models unchanged. The models
check structure and datatypes, not value-set bindings or invariants, so the
required bindings that matter to us are checked here as data (REQUIRED_CODES).
What we store is the client's JSON (after our own server-side stamps), not the
model's re-serialisation: validation is a gate, not a transformation.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from fhirserver.core.errors import FhirError, Issue

# The resource types this server serves (present in both R4 and R4B).
SERVED_TYPES = ("Patient", "Practitioner", "Organization", "Communication", "AuditEvent")
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# Required bindings the R4B models do not enforce: (type, element path) -> allowed codes.
REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Communication", "status"): frozenset(
        {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
         "entered-in-error", "unknown"}
    ),
    ("Communication", "priority"): frozenset({"routine", "urgent", "asap", "stat"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Practitioner", "gender"): frozenset({"male", "female", "other", "unknown"}),
}


def parse_json(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Turn a request body into a JSON object, or raise a 400 OperationOutcome."""
    if isinstance(body, dict):
        return body
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirError(400, "structure", "The body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise FhirError(400, "structure", "The body must be a JSON object (a FHIR resource)")
    return data


def check_type(res_type: str) -> None:
    if res_type not in SERVED_TYPES:
        raise FhirError(404, "not-supported", f"Resource type {res_type!r} is not served here")


def check_id(res_id: str) -> None:
    if not ID_RE.match(res_id):
        raise FhirError(400, "invalid", "The id is not a valid FHIR id", ["id"])


def _expression(res_type: str, loc: tuple[Any, ...]) -> str:
    out = res_type
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_resource(res_type: str, data: dict[str, Any]) -> None:
    """Validate ``data`` as a ``res_type`` resource; raise 400 with one issue per problem.

    Diagnostics name the element and the kind of problem, never the offending value
    (it may be PHI).
    """
    check_type(res_type)
    if data.get("resourceType") != res_type:
        raise FhirError(400, "invalid", f"resourceType must be {res_type}", ["resourceType"])
    model = get_fhir_model_class(res_type)
    issues: list[Issue] = []
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(err["loc"])
            kind = err["type"]
            if kind == "extra_forbidden":
                msg = "Unknown element"
            elif kind == "missing":
                msg = "Required element is missing"
            else:
                msg = str(err["msg"]).split(",", 1)[-1].strip() if kind == "value_error" else str(err["msg"])
            issues.append(Issue("invalid", msg, [_expression(res_type, loc)]))
    for (rtype, path), allowed in REQUIRED_CODES.items():
        if rtype == res_type and path in data and data[path] not in allowed:
            issues.append(Issue("code-invalid", f"{path} has a code outside its required value set",
                                [f"{res_type}.{path}"]))
    if issues:
        raise FhirError(400, "invalid", issues[0].diagnostics, issues=issues)

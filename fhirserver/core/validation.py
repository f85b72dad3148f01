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
from decimal import Decimal
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from fhirserver.core.errors import FhirError, Issue
from fhirserver.core.resource_types import SERVED_TYPES

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Element names we may repeat in an expression: anything else (an unknown key that is not
# name-shaped) is shown as "(unknown)", so a diagnostic never carries arbitrary input.
NAME_RE = re.compile(r"^_?[A-Za-z][A-Za-z0-9_]{0,63}$")
# Real resources nest a dozen levels; the models recurse per level, so a body nested
# hundreds deep would exhaust the stack (a RecursionError, i.e. a 500) instead of failing cleanly.
MAX_DEPTH = 64

# Required bindings the R4B models do not enforce: (type, element path) -> allowed codes.
REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Communication", "status"): frozenset(
        {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"}
    ),
    ("Communication", "priority"): frozenset({"routine", "urgent", "asap", "stat"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Practitioner", "gender"): frozenset({"male", "female", "other", "unknown"}),
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Turn a request body into a JSON object, or raise a 400 OperationOutcome.

    The body must be UTF-8 (a leading BOM is tolerated), strict JSON (no NaN or
    Infinity), an object, at most MAX_DEPTH levels deep, without null member values
    (FHIR JSON omits empty elements) and without NUL characters (no database text
    column can hold them).
    """
    if isinstance(body, dict):
        return body
    try:
        text = body.decode("utf-8-sig") if isinstance(body, bytes) else body
        data = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise FhirError(400, "structure", "The body is not UTF-8") from exc
    except RecursionError as exc:
        raise FhirError(400, "structure", "The JSON is nested too deeply") from exc
    except ValueError as exc:
        raise FhirError(400, "structure", "The body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise FhirError(400, "structure", "The body must be a JSON object (a FHIR resource)")
    _check_tree(data)
    return data


def _child(path: str, key: str) -> str:
    name = key if NAME_RE.match(key) else "(unknown)"
    return f"{path}.{name}" if path else name


def _check_tree(data: dict[str, Any]) -> None:
    """Depth, null members and NUL characters, checked without recursion (the input is untrusted)."""
    root = data.get("resourceType")
    stack: list[tuple[Any, int, str]] = [(data, 1, root if root in SERVED_TYPES else "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise FhirError(400, "structure", f"The JSON is nested more than {MAX_DEPTH} levels deep")
        pairs: list[tuple[str | None, Any]] = (
            list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
        )
        for index, (key, value) in enumerate(pairs):
            where = _child(path, key) if key is not None else f"{path}[{index}]"
            if key is not None and "\x00" in key:
                raise FhirError(
                    400, "structure", "Element names must not contain NUL characters", [path] if path else None
                )
            if value is None and key is not None:
                raise FhirError(400, "structure", "null is not a valid value: omit the element instead", [where])
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, where))
            elif isinstance(value, str) and "\x00" in value:
                raise FhirError(400, "structure", "Strings must not contain NUL characters", [where])


def check_type(res_type: str) -> None:
    if res_type not in SERVED_TYPES:
        # The type is not named: it is whatever the client put in the URL.
        raise FhirError(404, "not-supported", "This resource type is not served here")


def check_id(res_id: str) -> None:
    if not ID_RE.match(res_id):
        raise FhirError(400, "invalid", "The id is not a valid FHIR id", ["id"])


def _expression(res_type: str, loc: tuple[Any, ...]) -> str:
    out = res_type
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part if NAME_RE.match(str(part)) else '(unknown)'}"
    return out


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "null"


def _expected_kind(attr: Any) -> str:
    """The JSON kind that the validated value ``attr`` must have come from."""
    if isinstance(attr, FHIRAbstractModel):
        return "an object"
    if isinstance(attr, list):
        return "an array"
    if isinstance(attr, bool):
        return "a boolean"
    if isinstance(attr, int | float | Decimal):
        return "a number"
    return "a string" if attr is not None else "null"


def _shape_issues(res_type: str, model: Any, data: dict[str, Any], path: tuple[Any, ...]) -> list[Issue]:
    """Values the models accepted only by converting them, e.g. a JSON string where an object belongs.

    The models parse a string as JSON for a complex element and coerce "true" to a boolean
    or "3" to an integer; the stored bytes would then not be FHIR JSON. The validated model
    tells what each element is, so its kind is compared with the kind that was sent.
    """
    issues: list[Issue] = []
    fields = {(f.alias or name): name for name, f in type(model).model_fields.items()}
    for key, value in data.items():
        name = fields.get(key)
        if name is not None:
            issues += _kind_issues(res_type, getattr(model, name, None), value, (*path, key))
    return issues


def _kind_issues(res_type: str, attr: Any, value: Any, path: tuple[Any, ...]) -> list[Issue]:
    expected = _expected_kind(attr)
    if expected == "a number" and isinstance(attr, int) and isinstance(value, float):
        expected = "a whole number"
    elif _json_kind(value) == expected:
        if isinstance(attr, FHIRAbstractModel):
            return _shape_issues(res_type, attr, value, path)
        if isinstance(attr, list):
            if len(attr) != len(value):
                return [Issue("structure", "The array does not match its element", [_expression(res_type, path)])]
            out: list[Issue] = []
            for i, (a, v) in enumerate(zip(attr, value, strict=True)):
                out += _kind_issues(res_type, a, v, (*path, i))
            return out
        return []
    return [Issue("structure", f"Expected {expected} here, not {_json_kind(value)}", [_expression(res_type, path)])]


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
        validated = model.model_validate(data)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(err["loc"])
            kind = err["type"]
            if kind == "extra_forbidden":
                msg = "Unknown element"
            elif kind == "json_invalid":  # the models parse a string given for a complex element as JSON
                msg = "Expected an object here, not a string"
            elif kind == "missing":
                msg = "Required element is missing"
            else:
                msg = str(err["msg"]).split(",", 1)[-1].strip() if kind == "value_error" else str(err["msg"])
            issues.append(Issue("invalid", msg, [_expression(res_type, loc)]))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        # The models fail this way on some malformed input (e.g. an unknown contained
        # resourceType is a KeyError): still the client's error, never a 500.
        issues.append(Issue("structure", "The resource does not have a valid FHIR structure"))
    else:
        issues += _shape_issues(res_type, validated, data, ())
    for (rtype, path), allowed in REQUIRED_CODES.items():
        value = data.get(path)
        if rtype == res_type and path in data and not (isinstance(value, str) and value in allowed):
            issues.append(
                Issue("code-invalid", f"{path} has a code outside its required value set", [f"{res_type}.{path}"])
            )
    if issues:
        raise FhirError(400, "invalid", issues[0].diagnostics, issues=issues)

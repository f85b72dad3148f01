"""JSON Patch (RFC 6902) on a stored resource: parsing the patch, applying it, and what it may not change.

The patched resource then goes through the update path unchanged (validation, the type's
write rules, encryption, index rows, ``If-Match``), so a PATCH can do nothing a PUT of the
same content could not. The operations themselves are the ``jsonpatch`` library's (see
docs/decisions.md): a malformed patch is a 400, one that does not apply to this resource (a
failed ``test``, a path that is not there) a 422, and so is a result whose ``id`` or
``resourceType`` differs from the resource's.
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import jsonpointer

from fhirserver.core.errors import FhirError

PATCH_MEDIA_TYPE = "application/json-patch+json"
MAX_OPERATIONS = 1000
OPERATIONS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(body: bytes | str) -> jsonpatch.JsonPatch:
    """The patch document, or a 400 OperationOutcome that says what is wrong with it."""
    try:
        text = body.decode("utf-8-sig") if isinstance(body, bytes) else body
        ops = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise FhirError(400, "structure", "The patch is not UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise FhirError(400, "structure", "The patch is not valid JSON") from exc
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise FhirError(400, "structure", "A JSON Patch is an array of operation objects")
    if len(ops) > MAX_OPERATIONS:
        raise FhirError(400, "too-costly", f"A patch may hold at most {MAX_OPERATIONS} operations")
    try:
        for op in ops:  # the library finds most of these only while applying; say so first
            if op.get("op") not in OPERATIONS:
                raise jsonpatch.InvalidJsonPatch(f"unknown operation {str(op.get('op'))[:40]!r}")
            jsonpointer.JsonPointer(op["path"])
            if op["op"] in ("move", "copy"):
                jsonpointer.JsonPointer(op["from"])
            elif op["op"] in ("add", "replace", "test") and "value" not in op:
                raise jsonpatch.InvalidJsonPatch(f"'{op['op']}' needs a 'value'")
        return jsonpatch.JsonPatch(ops)
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException, KeyError, TypeError, AttributeError) as exc:
        raise FhirError(400, "structure", f"Malformed JSON Patch: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"missing member {text}" if isinstance(exc, KeyError) else text[:200]


def _where(patch: jsonpatch.JsonPatch, resource: dict[str, Any]) -> str:
    """Which operation failed (its number and the client's own path), found by applying them in turn."""
    doc: Any = resource
    for n, op in enumerate(patch.patch):
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError):
            return f" (operation {n + 1}, {op['op']} at {str(op['path'])[:200]})"
    return ""


def apply(resource: dict[str, Any], patch: jsonpatch.JsonPatch) -> dict[str, Any]:
    """The patched copy of ``resource``; 422 when the patch does not apply or changes identity."""
    # The library's messages quote the stored values they compared or looked in ("Rivera is
    # not equal to tested value ..."): those are PHI, so the answer names the operation only.
    try:
        result = patch.apply(resource, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise FhirError(422, "processing", f"A 'test' operation failed{_where(patch, resource)}") from exc
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException, TypeError, ValueError) as exc:
        raise FhirError(
            422, "processing", f"The patch does not apply to this resource{_where(patch, resource)}"
        ) from exc
    if not isinstance(result, dict):
        raise FhirError(422, "processing", "The patch must leave a resource (a JSON object)")
    for key in ("resourceType", "id"):
        if result.get(key) != resource.get(key):
            raise FhirError(422, "processing", f"A patch may not change {key}", [key])
    return result

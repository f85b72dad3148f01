"""The handlers of the routing table: each takes a Call, uses the repository, returns a response.

Resource bodies are served as the stored bytes; Bundles are assembled around them
without re-serialising the resources.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fhirserver.core import access
from fhirserver.core.errors import FhirError, not_found
from fhirserver.core.hooks import ENTRY_DECORATORS, OPERATIONS
from fhirserver.core.http import FhirResponse
from fhirserver.core.instants import instant, parse_instant
from fhirserver.core.stored import Stored
from fhirserver.core.validation import ID_RE

if TYPE_CHECKING:
    from fhirserver.core.router import Call


def _resource_headers(call: Call, stored: Stored) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": stored.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Location": f"{call.request.base_url}/{stored.res_type}/{stored.res_id}/_history/{stored.version_id}",
    }


def patient_ref_of(res_type: str, res_id: str, data: dict[str, Any] | None) -> str | None:
    """The patient a resource is about, for the audit record."""
    if res_type == "Patient":
        return f"Patient/{res_id}"
    if res_type == "Communication" and data:
        ref = (data.get("subject") or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


def _note_patient(call: Call, stored: Stored) -> None:
    data = stored.json() if stored.res_type == "Communication" else None
    call.patient_ref = patient_ref_of(stored.res_type, stored.res_id, data)


def _etag_matches(header: str | None, stored: Stored) -> bool:
    """``If-None-Match``: any of the listed tags (weak or strong) names the current version."""
    if not header:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in header.split(",")}
    return "*" in tags or str(stored.version_id) in tags


def read(call: Call) -> FhirResponse:
    stored = call.repo.read(call.params["type"], call.params["id"])
    _note_patient(call, stored)
    headers = _resource_headers(call, stored)
    headers.pop("Location")
    if _etag_matches(call.request.header("if-none-match"), stored):
        return FhirResponse(304, b"", headers)  # the client's copy is current (audited as a read)
    return FhirResponse(200, stored.raw, headers)


def prefer_return(call: Call) -> str:
    """The ``return`` preference of ``Prefer`` (RFC 7240): minimal, representation (default) or
    OperationOutcome; anything else is ignored, as a preference may be."""
    for part in (call.request.header("prefer") or "").replace(",", ";").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"') in ("minimal", "OperationOutcome"):
            return value.strip().strip('"')
    return "representation"


def _written(call: Call, status: int, stored: Stored, what: str) -> FhirResponse:
    """The answer to a create, update or patch, shaped by ``Prefer: return=``."""
    headers = _resource_headers(call, stored)
    wanted = prefer_return(call)
    if wanted == "minimal":
        return FhirResponse(status, b"", headers)
    if wanted == "OperationOutcome":
        text = f"{what} {stored.res_type}/{stored.res_id}, version {stored.version_id}"
        issue = {"severity": "information", "code": "informational", "diagnostics": text}
        return FhirResponse.json(status, {"resourceType": "OperationOutcome", "issue": [issue]}, **headers)
    return FhirResponse(status, stored.raw, headers)


def vread(call: Call) -> FhirResponse:
    stored = call.repo.vread(call.params["type"], call.params["id"], call.params["vid"])
    _note_patient(call, stored)
    headers = _resource_headers(call, stored)
    headers.pop("Location")
    return FhirResponse(200, stored.raw, headers)


def create(call: Call) -> FhirResponse:
    criteria = call.request.header("if-none-exist")
    if criteria is not None:  # conditional create: 200 with the one match, 412 with several
        stored, created = call.repo.conditional_create(call.params["type"], call.request.body, criteria)
    else:
        stored, created = call.repo.create(call.params["type"], call.request.body), True
    call.res_id = stored.res_id
    _note_patient(call, stored)
    return _written(call, 201 if created else 200, stored, "Created" if created else "Found")


def update(call: Call) -> FhirResponse:
    stored, created = call.repo.update(
        call.params["type"], call.params["id"], call.request.body, call.request.header("if-match")
    )
    _note_patient(call, stored)
    return _written(call, 201 if created else 200, stored, "Created" if created else "Updated")


def patch(call: Call) -> FhirResponse:
    stored = call.repo.patch(call.params["type"], call.params["id"], call.request.body, call.request.header("if-match"))
    _note_patient(call, stored)
    return _written(call, 200, stored, "Patched")


def conditional_update(call: Call) -> FhirResponse:
    res_type = call.params["type"]
    stored, created = call.repo.conditional_update(
        res_type, call.request.query, call.request.body, call.request.header("if-match")
    )
    call.res_id = stored.res_id
    _note_patient(call, stored)
    return _written(call, 201 if created else 200, stored, "Created" if created else "Updated")


def conditional_delete(call: Call) -> FhirResponse:
    deleted = call.repo.conditional_delete(call.params["type"], call.request.query)
    if deleted is not None and call.params["type"] == "Patient":
        call.patient_ref = f"Patient/{deleted}"
    return FhirResponse(204)


def delete(call: Call) -> FhirResponse:
    call.repo.delete(call.params["type"], call.params["id"])
    if call.params["type"] == "Patient":
        call.patient_ref = f"Patient/{call.params['id']}"
    return FhirResponse(204)


def _entries(parts: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def _since(call: Call) -> datetime | None:
    """``_since`` of a history request (at most once), as an instant."""
    values = [v for n, v in call.request.query if n == "_since"]
    if len(values) > 1:
        raise FhirError(400, "invalid", "_since may be given once", ["_since"])
    return parse_instant(values[0], "_since") if values else None


def history(call: Call) -> FhirResponse:
    rtype, rid = call.params["type"], call.params["id"]
    versions = call.repo.history(rtype, rid, _since(call))
    call.patient_ref = patient_ref_of(rtype, rid, next((v.json() for v in versions if v.raw), None))
    base = call.request.base_url
    parts = []
    for v in versions:
        url = f"{base}/{rtype}/{rid}".encode()
        head = b'{"fullUrl":"' + url + b'"'
        if v.deleted:
            req = {"method": "DELETE", "url": f"{rtype}/{rid}"}
            resp = {"status": "410 Gone", "lastModified": instant(v.last_updated)}
            parts.append(head + b',"request":' + _j(req) + b',"response":' + _j(resp) + b"}")
        else:
            method = "POST" if v.version_id == 1 else "PUT"
            req = {"method": method, "url": rtype if method == "POST" else f"{rtype}/{rid}"}
            resp = {
                "status": "201 Created" if method == "POST" else "200 OK",
                "etag": v.etag,
                "lastModified": instant(v.last_updated),
            }
            parts.append(head + b',"resource":' + v.raw + b',"request":' + _j(req) + b',"response":' + _j(resp) + b"}")
    body = (
        b'{"resourceType":"Bundle","type":"history","total":'
        + str(len(versions)).encode()
        + b',"entry":'
        + _entries(parts)
        + b"}"
    )
    return FhirResponse(200, body)


def _j(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def search_params(call: Call) -> list[tuple[str, str]]:
    params = list(call.request.query)
    if call.request.method == "POST":
        ctype = (call.request.header("content-type") or "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
        try:
            # errors="strict": a percent-encoded byte that is not UTF-8 is refused, not replaced.
            params += parse_qsl(
                call.request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, errors="strict"
            )
        except UnicodeDecodeError as exc:
            raise FhirError(400, "invalid", "The search body is not UTF-8") from exc
    return [(k, v) for k, v in params if k not in ("_format", "_pretty")]


def search(call: Call) -> FhirResponse:
    rtype = call.params["type"]
    params = search_params(call)
    call.query_names = [k for k, _ in params]
    page = call.repo.search(rtype, params)
    stored = [call.repo.to_stored(r) for r in page.rows]
    if call.principal.patient or call.principal.role == "patient":
        pid = call.principal.patient or (call.principal.fhir_user or "").split("/", 1)[-1]
        call.patient_ref = f"Patient/{pid}"
    decorate = ENTRY_DECORATORS.get(rtype)
    extensions = decorate(call, [s.res_id for s in stored]) if decorate and stored else {}
    base = call.request.base_url
    parts = []
    for s in stored:
        entry = (
            b'{"fullUrl":"'
            + f"{base}/{rtype}/{s.res_id}".encode()
            + b'","resource":'
            + s.raw
            + b',"search":{"mode":"match"}'
        )
        if s.res_id in extensions:
            entry += b',"extension":' + _j(extensions[s.res_id])
        parts.append(entry + b"}")
    links = [{"relation": "self", "url": f"{base}/{rtype}"}]
    if page.next_cursor:
        links.append({"relation": "next", "url": f"{base}/{rtype}?_cursor={page.next_cursor}"})
    body = b'{"resourceType":"Bundle","type":"searchset","link":' + _j(links) + b',"entry":' + _entries(parts) + b"}"
    return FhirResponse(200, body)


def _operation(call: Call, level: str) -> FhirResponse:
    res_type, name = call.params["type"], call.params["op"]
    op = OPERATIONS.get((res_type, name, level))
    if op is None:
        # Only an operation this server defines is named back; anything else is the client's text.
        known = any(n == name for _, n, _ in OPERATIONS)
        what = f"Operation {name}" if known else "This operation"
        raise FhirError(404, "not-supported", f"{what} is not supported on this path")
    call.operation = name
    if call.request.method not in op.methods:
        verb = "changes state: use POST" if op.methods == ("POST",) else f"takes {' or '.join(op.methods)}"
        raise FhirError(405, "not-supported", f"{name} {verb}")
    # Every operation declares the permission it needs on its type; checked before it runs.
    access.check_interaction(call.principal, res_type, op.permission)
    rid = call.params.get("id", "")
    if level == "instance" and op.permission not in access.READ_PERMS and ID_RE.match(rid):
        # A state-changing operation on a record its caller may read but not write (a
        # break-glass grant opens records for reading only) is answered 404, as writes are.
        p = call.principal
        if access.can_see(call.session, p, res_type, rid) and not access.can_see(
            call.session, p, res_type, rid, op.permission
        ):
            raise not_found(res_type, rid)
    return op.handler(call)


def type_operation(call: Call) -> FhirResponse:
    return _operation(call, "type")


def instance_operation(call: Call) -> FhirResponse:
    return _operation(call, "instance")

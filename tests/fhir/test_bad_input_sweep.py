"""Bad input to every /fhir route and operation: a clear 4xx OperationOutcome, never a 500.

Each case sends one malformed request (a body, a path, a query string, a header or a
token) and checks, on both databases:

- the status is the expected 4xx;
- the body is an OperationOutcome whose every issue has diagnostics;
- SENTINEL, carried by every bad value, appears nowhere in the response (body or headers);
- nothing was written: the rows of ``resource`` and ``resource_version`` (AuditEvents
  aside: refused requests are audited), ``webmail_read_state``, ``outbox`` and
  ``user_account`` are the same before and after.

SENTINEL is not name-shaped (it holds a "!"): element and search-parameter names that
*are* name-shaped are named back on purpose ("Unknown element", "Unknown search
parameter 'x'"), as they are the vocabulary of the API rather than data.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from fhirserver.core.router import ROUTES
from fhirserver.extensions import db
from fhirserver.models import OutboxRow, ReadState, ResourceRow, ResourceVersionRow
from smart_auth.models import UserAccount
from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, make_practice, message_json, patient_json, token_for
from tests.support import uid

SENTINEL = "Qz7!sentinel"
FHIR = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
ADMIN_SCOPE = "user/Practitioner.cruds user/Organization.cruds"
AUDITOR_SCOPE = "user/AuditEvent.rs"


# -- the world every case runs against (one per database) ---------------------------------------


@dataclass
class World:
    ids: dict[str, str]
    tokens: dict[str, str]
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(app: Any, settings: Any) -> World:
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository
    from smart_auth import accounts

    with app.app_context():
        p = make_practice(db.session, settings)
        admin = accounts.create_user(db.session, username=f"adm{uid()}", password=p.password, role="admin")
        auditor = accounts.create_user(db.session, username=f"aud{uid()}", password=p.password, role="auditor")
        system = Repository(db.session, settings, system_principal("tests"))
        org = system.create("Organization", {"resourceType": "Organization", "name": f"Org {uid()}"})
        msg = Repository(db.session, settings, p.patient).create(
            "Communication", message_json(p.patient_ref, p.practitioner_ref, topic="Sweep")
        )
        db.session.commit()
        ids = {
            "pid": p.patient_id,
            "prac": p.practitioner_id,
            "org": org.res_id,
            "cid": msg.res_id,
            "patient_ref": p.patient_ref,
            "prac_ref": p.practitioner_ref,
        }
        patient_now = system.read("Patient", p.patient_id).json()
        prac_now = system.read("Practitioner", p.practitioner_id).json()
        org_now = system.read("Organization", org.res_id).json()
        admin_id, auditor_id = admin.id, auditor.id
        db.session.remove()
    tokens = {
        "provider": token_for(app, settings, p.provider_user_id, PROVIDER_SCOPE),
        "patient": token_for(app, settings, p.patient_user_id, PATIENT_SCOPE, patient=p.patient_id),
        "admin": token_for(app, settings, admin_id, ADMIN_SCOPE),
        "auditor": token_for(app, settings, auditor_id, AUDITOR_SCOPE),
    }
    bodies = {
        "Patient": patient_json([p.practitioner_ref]),
        "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Sweep"}]},
        "Organization": {"resourceType": "Organization", "name": "Sweep"},
        "Communication": message_json(p.patient_ref, p.practitioner_ref),
        "Patient/update": patient_now,
        "Practitioner/update": prac_now,
        "Organization/update": org_now,
    }
    return World(ids, tokens, bodies)


def _writes(app: Any) -> dict[str, int]:
    """Row counts of every table a FHIR request may write (AuditEvents aside)."""
    with app.app_context():
        s = db.session
        out = {
            "resource": s.scalar(
                select(func.count()).select_from(ResourceRow).where(ResourceRow.res_type != "AuditEvent")
            ),
            "resource_version": s.scalar(
                select(func.count()).select_from(ResourceVersionRow).where(ResourceVersionRow.res_type != "AuditEvent")
            ),
            "read_state": s.scalar(select(func.count()).select_from(ReadState)),
            "outbox": s.scalar(select(func.count()).select_from(OutboxRow)),
            "user_account": s.scalar(select(func.count()).select_from(UserAccount)),
        }
        db.session.remove()
    return out


# -- cases ----------------------------------------------------------------------------------------

Body = bytes | Callable[[World], bytes] | None


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # may hold {pid} {prac} {org} {cid}, and a query string
    status: int
    who: str = "provider"  # a key of World.tokens, or "" for a raw Authorization header
    body: Body = None
    ctype: str | None = FHIR
    headers: tuple[tuple[str, str], ...] = ()


def _j(data: Any) -> bytes:
    return json.dumps(data).encode()


def _with(kind: str, **changes: Any) -> Callable[[World], bytes]:
    """A valid body of ``kind`` (e.g. "Patient" or "Patient/update") with ``changes`` applied."""

    def build(w: World) -> bytes:
        data = json.loads(json.dumps(w.bodies[kind]))
        data.update(changes)
        return _j(data)

    return build


def _raw(kind: str, member: bytes) -> Callable[[World], bytes]:
    """A valid body of ``kind`` with one more member spliced in as raw JSON text."""

    def build(w: World) -> bytes:
        text = _j(w.bodies[kind])
        return text[:-1] + b"," + member + b"}"

    return build


def _nested_extension(levels: int) -> bytes:
    inner = b'{"url":"http://example.org/e","valueString":"' + SENTINEL.encode() + b'"}'
    return b'"extension":[' + b'{"url":"http://example.org/e","extension":[' * levels + inner + b"]}" * levels + b"]"


# Bad bodies that every writable type must refuse with 400: (id, builder from a body kind).
GENERIC_BODIES: list[tuple[str, Callable[[str], Body]]] = [
    (
        "malformed-json",
        lambda k: b'{"resourceType": "' + k.split("/")[0].encode() + b'", "x": ["' + SENTINEL.encode() + b'"',
    ),
    ("json-array", lambda k: _j([SENTINEL])),
    ("json-string", lambda k: _j(SENTINEL)),
    ("json-number", lambda k: b"12345"),
    ("json-null", lambda k: b"null"),
    ("empty-body", lambda k: b""),
    ("wrong-resourceType", lambda k: _with(k, resourceType="Observation", status=SENTINEL)),
    ("unknown-resourceType", lambda k: _with(k, resourceType=SENTINEL)),
    ("resourceType-as-array", lambda k: _with(k, resourceType=[k.split("/")[0]])),
    ("non-utf8-bytes", lambda k: _raw(k, b'"language":"\xff\xfe' + SENTINEL.encode() + b'"')),
    ("utf16-body", lambda k: lambda w: json.dumps(w.bodies[k]).encode("utf-16")),
    ("nested-arrays-10000", lambda k: _raw(k, b'"extension":' + b"[" * 10_000 + b"]" * 10_000)),
    ("nested-objects-10000", lambda k: b'{"a":' * 10_000 + _j(SENTINEL) + b"}" * 10_000),
    ("nested-extensions-100", lambda k: _raw(k, _nested_extension(100))),
    (
        "integer-5000-digits",
        lambda k: _raw(k, b'"extension":[{"url":"http://example.org/n","valueInteger":' + b"9" * 5000 + b"}]"),
    ),
    ("integer-over-32-bits", lambda k: _with(k, extension=[{"url": "http://example.org/n", "valueInteger": 2**40}])),
    ("decimal-overflow", lambda k: _raw(k, b'"extension":[{"url":"http://example.org/n","valueDecimal":1e999}]')),
    ("nan", lambda k: _raw(k, b'"extension":[{"url":"http://example.org/n","valueDecimal":NaN}]')),
    ("null-member", lambda k: _with(k, language=None)),
    ("null-in-object-array", lambda k: _with(k, extension=[None])),
    ("array-where-object", lambda k: _with(k, meta=[{"source": SENTINEL}])),
    ("object-where-array", lambda k: _with(k, extension={"url": "http://example.org/e", "valueString": SENTINEL})),
    ("json-string-where-object", lambda k: _with(k, meta=json.dumps({"source": f"http://x.example/{SENTINEL}"}))),
    ("string-where-boolean", lambda k: _with(k, extension=[{"url": "http://example.org/b", "valueBoolean": "true"}])),
    ("string-where-integer", lambda k: _with(k, extension=[{"url": "http://example.org/b", "valueInteger": "3"}])),
    ("float-where-integer", lambda k: _with(k, extension=[{"url": "http://example.org/b", "valueInteger": 1.5}])),
    (
        "nul-in-string",
        lambda k: _with(k, extension=[{"url": "http://example.org/s", "valueString": f"a\x00{SENTINEL}"}]),
    ),
    ("nul-in-key", lambda k: _raw(k, b'"a\\u0000' + SENTINEL.encode() + b'":1')),
    (
        "lone-surrogate",
        lambda k: _raw(
            k, b'"extension":[{"url":"http://example.org/s","valueString":"\\ud800' + SENTINEL.encode() + b'"}]'
        ),
    ),
    ("unknown-element", lambda k: _with(k, **{SENTINEL: 1})),
    ("unknown-contained-type", lambda k: _with(k, contained=[{"resourceType": SENTINEL, "id": "c1"}])),
    ("bad-code", lambda k: _with(k, language=f" {SENTINEL}")),
]

# (type, who may write it, create path, update path or None)
WRITABLE = [
    ("Patient", "provider", "/fhir/Patient", "/fhir/Patient/{pid}"),
    ("Practitioner", "admin", "/fhir/Practitioner", "/fhir/Practitioner/{prac}"),
    ("Organization", "admin", "/fhir/Organization", "/fhir/Organization/{org}"),
    ("Communication", "patient", "/fhir/Communication", None),
]


def _body_cases() -> list[Case]:
    out = []
    for rtype, who, create, update in WRITABLE:
        for name, build in GENERIC_BODIES:
            out.append(Case(f"create-{rtype}-{name}", "POST", create, 400, who, build(rtype)))
            if update:
                out.append(Case(f"update-{rtype}-{name}", "PUT", update, 400, who, build(f"{rtype}/update")))
    return out


def _msg(**changes: Any) -> Callable[[World], bytes]:
    return _with("Communication", **changes)


SPECIFIC_BODIES = [
    # A Communication whose parts have the wrong shape: 400 before any WebMail rule runs.
    Case(
        "message-sender-as-string",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        lambda w: _msg(sender=w.ids["patient_ref"] + SENTINEL)(w),
    ),
    Case(
        "message-sender-as-json-string",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        lambda w: _msg(sender=json.dumps({"reference": w.ids["patient_ref"], "display": SENTINEL}))(w),
    ),
    Case(
        "message-sender-as-array",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        lambda w: _msg(sender=[{"reference": w.ids["patient_ref"], "display": SENTINEL}])(w),
    ),
    Case(
        "message-recipient-as-object",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        lambda w: _msg(recipient={"reference": w.ids["prac_ref"], "display": SENTINEL})(w),
    ),
    Case(
        "message-recipient-reference-number",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        _msg(recipient=[{"reference": 12345, "display": SENTINEL}]),
    ),
    Case("message-payload-as-string", "POST", "/fhir/Communication", 400, "patient", _msg(payload=SENTINEL)),
    Case(
        "message-payload-number",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        _msg(payload=[{"contentString": 5}, {"contentString": SENTINEL}]),
    ),
    Case("message-topic-text-array", "POST", "/fhir/Communication", 400, "patient", _msg(topic={"text": [SENTINEL]})),
    Case("message-status-unknown", "POST", "/fhir/Communication", 400, "patient", _msg(status=SENTINEL)),
    Case("message-priority-unknown", "POST", "/fhir/Communication", 400, "patient", _msg(priority=SENTINEL)),
    Case("message-sent-not-a-date", "POST", "/fhir/Communication", 400, "patient", _msg(sent=SENTINEL)),
    Case(
        "message-subject-as-array",
        "POST",
        "/fhir/Communication",
        400,
        "patient",
        lambda w: _msg(subject=[{"reference": w.ids["patient_ref"], "display": SENTINEL}])(w),
    ),
    Case("message-no-sender", "POST", "/fhir/Communication", 422, "patient", _msg(sender={"display": SENTINEL})),
    Case(
        "message-in-response-to-unknown",
        "POST",
        "/fhir/Communication",
        422,
        "patient",
        _msg(inResponseTo=[{"reference": f"Communication/{SENTINEL}"}]),
    ),
    Case(
        "message-to-unknown-practitioner",
        "POST",
        "/fhir/Communication",
        422,
        "patient",
        _msg(recipient=[{"reference": f"Practitioner/{SENTINEL}"}]),
    ),
    Case("message-update-refused", "PUT", "/fhir/Communication/{cid}", 405, "patient", _msg(id=SENTINEL)),
    Case("message-delete-refused", "DELETE", "/fhir/Communication/{cid}", 405, "provider"),
    # Patient elements of the wrong kind.
    Case("patient-gender-array", "POST", "/fhir/Patient", 400, "provider", _with("Patient", gender=[SENTINEL])),
    Case("patient-gender-object", "POST", "/fhir/Patient", 400, "provider", _with("Patient", gender={SENTINEL: 1})),
    Case("patient-gender-unknown", "POST", "/fhir/Patient", 400, "provider", _with("Patient", gender=SENTINEL)),
    Case(
        "patient-multiple-birth-string",
        "POST",
        "/fhir/Patient",
        400,
        "provider",
        _with("Patient", multipleBirthInteger="3"),
    ),
    Case(
        "patient-multiple-birth-boolean",
        "POST",
        "/fhir/Patient",
        400,
        "provider",
        _with("Patient", multipleBirthInteger=True),
    ),
    Case("patient-active-string", "POST", "/fhir/Patient", 400, "provider", _with("Patient", active="true")),
    Case("patient-birthdate-garbage", "POST", "/fhir/Patient", 400, "provider", _with("Patient", birthDate=SENTINEL)),
    Case("patient-birthdate-null", "POST", "/fhir/Patient", 400, "provider", _with("Patient", birthDate=None)),
    Case("patient-name-null-item", "POST", "/fhir/Patient", 400, "provider", _with("Patient", name=[None])),
    Case("patient-name-array-in-array", "POST", "/fhir/Patient", 400, "provider", _with("Patient", name=[[SENTINEL]])),
    Case(
        "patient-gp-as-string",
        "POST",
        "/fhir/Patient",
        400,
        "provider",
        lambda w: _with("Patient", generalPractitioner=w.ids["prac_ref"] + SENTINEL)(w),
    ),
    Case(
        "patient-gp-as-json-string",
        "POST",
        "/fhir/Patient",
        400,
        "provider",
        lambda w: _with(
            "Patient", generalPractitioner=[json.dumps({"reference": w.ids["prac_ref"], "display": SENTINEL})]
        )(w),
    ),
    Case(
        "patient-update-id-mismatch",
        "PUT",
        "/fhir/Patient/{pid}",
        400,
        "provider",
        _with("Patient/update", id="other-id"),
    ),
    Case(
        "patient-update-no-id",
        "PUT",
        "/fhir/Patient/{pid}",
        400,
        "provider",
        lambda w: _j({k: v for k, v in w.bodies["Patient/update"].items() if k != "id"}),
    ),
    Case(
        "auditevent-create-refused",
        "POST",
        "/fhir/AuditEvent",
        405,
        "auditor",
        _j({"resourceType": "AuditEvent", "id": SENTINEL}),
    ),
    Case(
        "body-too-large",
        "POST",
        "/fhir/Patient",
        413,
        "provider",
        _raw("Patient", b'"text":{"status":"generated","div":"' + b"x" * 1_100_000 + SENTINEL.encode() + b'"}'),
    ),
]

LONG_ID = "a" * 65 + SENTINEL
BAD_IDS = [
    ("id-too-long", LONG_ID),
    ("id-illegal-char", SENTINEL),
    ("id-nul", "a%00" + SENTINEL),
    ("id-not-utf8", "a%FF" + SENTINEL),
    ("id-emoji", "%F0%9F%98%80" + SENTINEL),
]


def _url_cases() -> list[Case]:
    out = []
    for name, bad in BAD_IDS:
        out += [
            Case(f"read-{name}", "GET", f"/fhir/Patient/{bad}", 400),
            Case(f"update-{name}", "PUT", f"/fhir/Patient/{bad}", 400, body=_with("Patient/update")),
            Case(f"delete-{name}", "DELETE", f"/fhir/Patient/{bad}", 400),
            Case(f"history-{name}", "GET", f"/fhir/Patient/{bad}/_history", 400),
            Case(f"vread-{name}", "GET", f"/fhir/Patient/{bad}/_history/1", 400),
            Case(f"mark-read-{name}", "POST", f"/fhir/Communication/{bad}/$mark-read", 400),
            Case(f"mark-unread-{name}", "POST", f"/fhir/Communication/{bad}/$mark-unread", 400),
            Case(f"grant-{name}", "POST", f"/fhir/Patient/{bad}/$grant-portal-access", 400),
        ]
    unknown = f"nosuch{uuid.uuid4().hex[:8]}"
    out += [
        # Unknown resource types: 404, the type not named back.
        Case("type-unknown-search", "GET", f"/fhir/{SENTINEL}", 404),
        Case("type-unknown-create", "POST", f"/fhir/{SENTINEL}", 404, body=_j({"resourceType": SENTINEL})),
        Case("type-unknown-read", "GET", f"/fhir/{SENTINEL}/1", 404),
        Case("type-unknown-update", "PUT", f"/fhir/{SENTINEL}/1", 404, body=_j({"resourceType": SENTINEL, "id": "1"})),
        Case("type-unknown-delete", "DELETE", f"/fhir/{SENTINEL}/1", 404),
        Case("type-unknown-history", "GET", f"/fhir/{SENTINEL}/1/_history", 404),
        Case("type-unknown-post-search", "POST", f"/fhir/{SENTINEL}/_search", 404, body=b"name=x", ctype=FORM),
        Case("type-unserved-read", "GET", "/fhir/Observation/1", 404),
        # Paths that are no FHIR interaction.
        Case("path-too-deep", "GET", "/fhir/Patient/{pid}/_history/1/" + SENTINEL, 404),
        Case("path-unknown-segment", "GET", "/fhir/Patient/{pid}/" + SENTINEL, 404),
        Case("path-metadata-suffix", "GET", "/fhir/metadata/" + SENTINEL, 404),
        # Versions.
        Case("vread-version-garbage", "GET", "/fhir/Patient/{pid}/_history/" + SENTINEL, 400),
        Case("vread-version-superscript", "GET", "/fhir/Patient/{pid}/_history/%C2%B2", 400),
        Case("vread-version-arabic-digit", "GET", "/fhir/Patient/{pid}/_history/%D9%A1", 400),
        Case("vread-version-negative", "GET", "/fhir/Patient/{pid}/_history/-1", 400),
        Case("vread-version-huge", "GET", "/fhir/Patient/{pid}/_history/" + "9" * 25, 404),
        Case("vread-version-zero", "GET", "/fhir/Patient/{pid}/_history/0", 404),
        # Unknown operations and operations on the wrong path: 404, the name not repeated.
        Case("op-unknown-type-get", "GET", f"/fhir/Patient/${SENTINEL}", 404),
        Case("op-unknown-type-post", "POST", f"/fhir/Communication/${SENTINEL}", 404),
        Case("op-unknown-instance-get", "GET", f"/fhir/Patient/{{pid}}/${SENTINEL}", 404),
        Case("op-unknown-instance-post", "POST", f"/fhir/Communication/{{cid}}/${SENTINEL}", 404),
        Case("op-unknown-on-unknown-type", "POST", f"/fhir/{SENTINEL}/${SENTINEL}", 404),
        Case("op-mark-read-on-patient", "POST", "/fhir/Patient/{pid}/$mark-read", 404),
        Case("op-mark-read-type-level", "POST", "/fhir/Communication/$mark-read", 404),
        Case("op-unread-count-instance-level", "GET", "/fhir/Communication/{cid}/$unread-count", 404),
        Case("op-unread-count-on-patient", "GET", "/fhir/Patient/$unread-count", 404),
        Case("op-grant-on-communication", "POST", "/fhir/Communication/{cid}/$grant-portal-access", 404),
        Case("op-grant-type-level", "POST", "/fhir/Patient/$grant-portal-access", 404),
        # The WebMail operations: method, parameters, target.
        Case("mark-read-get", "GET", "/fhir/Communication/{cid}/$mark-read", 405),
        Case("mark-unread-get", "GET", "/fhir/Communication/{cid}/$mark-unread", 405),
        Case("grant-get", "GET", "/fhir/Patient/{pid}/$grant-portal-access", 405),
        Case(
            "mark-read-body",
            "POST",
            "/fhir/Communication/{cid}/$mark-read",
            400,
            body=_j({"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": SENTINEL}]}),
        ),
        Case("mark-read-query", "POST", f"/fhir/Communication/{{cid}}/$mark-read?x={SENTINEL}", 400),
        Case(
            "mark-read-non-utf8-body",
            "POST",
            "/fhir/Communication/{cid}/$mark-read",
            400,
            body=b"\xff\xfe" + SENTINEL.encode(),
            ctype="text/plain",
        ),
        Case("mark-unread-body", "POST", "/fhir/Communication/{cid}/$mark-unread", 400, body=_j({"x": SENTINEL})),
        Case("mark-unread-query", "POST", f"/fhir/Communication/{{cid}}/$mark-unread?x={SENTINEL}", 400),
        Case("mark-read-unknown-message", "POST", f"/fhir/Communication/{unknown}/$mark-read", 404),
        Case("mark-unread-unknown-message", "POST", f"/fhir/Communication/{unknown}/$mark-unread", 404),
        Case("unread-count-query", "GET", f"/fhir/Communication/$unread-count?x={SENTINEL}", 400),
        Case("unread-count-body", "POST", "/fhir/Communication/$unread-count", 400, body=_j({"x": SENTINEL})),
        Case("grant-body", "POST", "/fhir/Patient/{pid}/$grant-portal-access", 400, body=_j({"x": SENTINEL})),
        Case(
            "grant-non-utf8-body",
            "POST",
            "/fhir/Patient/{pid}/$grant-portal-access",
            400,
            body=b"\xff" + SENTINEL.encode(),
            ctype="text/plain",
        ),
        Case("grant-query", "POST", f"/fhir/Patient/{{pid}}/$grant-portal-access?x={SENTINEL}", 400),
        Case("grant-unknown-patient", "POST", f"/fhir/Patient/{unknown}/$grant-portal-access", 404),
        Case("grant-by-patient", "POST", "/fhir/Patient/{pid}/$grant-portal-access", 403, "patient"),
    ]
    return out


# One concrete path per routing pattern; the test below fails when ROUTES gains a pattern.
ROUTE_EXAMPLES = {
    "metadata": "/fhir/metadata",
    ":type": "/fhir/Patient",
    ":type/_search": "/fhir/Patient/_search",
    ":type/$:op": "/fhir/Communication/$unread-count",
    ":type/:id": "/fhir/Patient/{pid}",
    ":type/:id/_history": "/fhir/Patient/{pid}/_history",
    ":type/:id/_history/:vid": "/fhir/Patient/{pid}/_history/1",
    ":type/:id/$:op": "/fhir/Communication/{cid}/$mark-read",
}
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def _method_cases() -> list[Case]:
    out = []
    for pattern, path in ROUTE_EXAMPLES.items():
        allowed = {m for m, p, _, _ in ROUTES if p == pattern}
        for method in METHODS:
            if method not in allowed:
                body = _with("Patient/update", text={"status": "generated", "div": SENTINEL})
                out.append(
                    Case(
                        f"method-{method}-{pattern}",
                        method,
                        path,
                        405,
                        body=body if method in ("POST", "PUT", "PATCH") else None,
                    )
                )
                # The method is refused before the body is looked at (a 405, not a 415).
                out.append(
                    Case(
                        f"method-{method}-{pattern}-text", method, path, 405, body=SENTINEL.encode(), ctype="text/plain"
                    )
                )
    return out


def _content_type_cases() -> list[Case]:
    out = []
    for ctype in (
        "text/plain",
        "application/xml",
        "application/fhir+xml",
        FORM,
        "multipart/form-data; boundary=x",
        "application/fhir+json; charset=latin-1",
        "application/json; charset=utf-16",
        f"application/{SENTINEL}+json",
        None,
    ):
        label = (ctype or "none").split(";")[0].replace("/", "-") + ("-charset" if ctype and "charset" in ctype else "")
        out.append(Case(f"ctype-create-{label}", "POST", "/fhir/Patient", 415, body=_with("Patient"), ctype=ctype))
        out.append(
            Case(f"ctype-update-{label}", "PUT", "/fhir/Patient/{pid}", 415, body=_with("Patient/update"), ctype=ctype)
        )
    out += [
        Case("ctype-search-json", "POST", "/fhir/Patient/_search", 415, body=_j({"name": SENTINEL})),
        Case("ctype-search-none", "POST", "/fhir/Patient/_search", 415, body=f"name={SENTINEL}".encode(), ctype=None),
        Case("format-xml", "GET", "/fhir/Patient/{pid}?_format=xml", 406),
        Case("format-garbage", "GET", f"/fhir/Patient/{{pid}}?_format={SENTINEL}", 406),
        Case("accept-xml", "GET", "/fhir/Patient/{pid}", 406, headers=(("Accept", "application/fhir+xml"),)),
    ]
    return out


# Bad search parameters, sent both in the query string (GET) and in a POST _search body.
SEARCHES = [
    ("count-negative", "_count=-1"),
    ("count-negative-sentinel", f"_count=-1{SENTINEL}"),
    ("count-letters", f"_count=abc{SENTINEL}"),
    ("count-exponent", "_count=1e3"),
    ("count-too-many-digits", "_count=" + "9" * 12),
    ("count-superscript", "_count=%C2%B2"),
    ("count-twice", "_count=1&_count=2"),
    ("sort-bogus", f"_sort=bogus{SENTINEL}"),
    ("sort-dash", "_sort=-"),
    ("sort-commas", "_sort=,,"),
    ("sort-twice", "_sort=_id&_sort=_id"),
    ("sort-key-twice", "_sort=_id,-_id"),
    ("sort-non-date", "_sort=name"),
    ("cursor-garbage", f"_cursor=garbage{SENTINEL}"),
    ("cursor-empty", "_cursor="),
    ("cursor-forged", "_cursor=" + "A" * 120),
    ("cursor-too-long", "_cursor=" + "A" * 20_000),
    ("cursor-repeated", "_cursor=abc&_cursor=def"),
    ("cursor-with-filter", f"_cursor=abc&name={SENTINEL}"),
    ("param-unknown", f"{SENTINEL}=1"),
    ("param-unknown-modifier", f"name:{SENTINEL}=x"),
    ("param-chained", f"general-practitioner.name={SENTINEL}"),
    ("param-include", "_include=Patient:general-practitioner"),
    ("param-nul-name", "%00=1"),
    ("value-nul", f"name=%00{SENTINEL}"),
    ("value-not-utf8", f"name=%FF{SENTINEL}"),
    ("value-too-long", "name=" + "a" * 5000 + SENTINEL),
    ("value-too-many-ors", "name=" + ",".join(["a"] * 101)),
    ("too-many-params", "&".join(f"name=a{i}" for i in range(60))),
    ("date-garbage", f"birthdate={SENTINEL}"),
    ("date-impossible", "birthdate=2020-02-30"),
    ("date-prefix-garbage", f"_lastUpdated=gt{SENTINEL}"),
    ("missing-garbage", f"general-practitioner:missing={SENTINEL}"),
    ("token-nul", "identifier=%00|%00"),
    ("reference-nul", f"general-practitioner=Practitioner/%00{SENTINEL}"),
]
OTHER_SEARCHES = [
    ("Communication", "patient", f"sender=%00{SENTINEL}"),
    ("Communication", "patient", f"sent=gt{SENTINEL}"),
    ("Communication", "patient", f"status=%00{SENTINEL}"),
    ("Communication", "patient", "_sort=-sent,sent"),
    ("Communication", "provider", f"recipient=%FF{SENTINEL}"),
    ("Practitioner", "patient", f"name=%00{SENTINEL}"),
    ("Organization", "admin", f"name=%00{SENTINEL}"),
    ("AuditEvent", "auditor", f"patient=%00{SENTINEL}"),
    ("AuditEvent", "auditor", f"date={SENTINEL}"),
]


def _search_cases() -> list[Case]:
    out = []
    for name, query in SEARCHES:
        out.append(Case(f"search-get-{name}", "GET", f"/fhir/Patient?{query}", 400))
        out.append(Case(f"search-post-{name}", "POST", "/fhir/Patient/_search", 400, body=query.encode(), ctype=FORM))
    for i, (rtype, who, query) in enumerate(OTHER_SEARCHES):
        out.append(Case(f"search-{rtype}-{i}", "GET", f"/fhir/{rtype}?{query}", 400, who))
    out += [
        Case(
            "search-post-raw-non-utf8",
            "POST",
            "/fhir/Patient/_search",
            400,
            body=b"name=\xff" + SENTINEL.encode(),
            ctype=FORM,
        ),
        Case("search-query-raw-non-utf8", "GET", "/fhir/Patient?name=%E9" + SENTINEL, 400),
    ]
    return out


def _header_cases() -> list[Case]:
    out = []
    for name, value in [
        ("garbage", f"garbage{SENTINEL}"),
        ("weak-letters", f'W/"abc{SENTINEL}"'),
        ("weak-superscript", 'W/"\u00b2"'),
        ("list", 'W/"1", W/"2"'),
        ("star", "*"),
        ("empty", ""),
        ("trailing", f'W/"1"{SENTINEL}'),
        ("negative", 'W/"-1"'),
    ]:
        h = (("If-Match", value),)
        out.append(Case(f"if-match-{name}", "PUT", "/fhir/Patient/{pid}", 400, body=_with("Patient/update"), headers=h))
        # A malformed If-Match is a 400 also when the resource does not exist (not a 412, not a create).
        new_id = f"new{uid()}"
        out.append(
            Case(
                f"if-match-{name}-new-id",
                "PUT",
                f"/fhir/Patient/{new_id}",
                400,
                body=_with("Patient", id=new_id),
                headers=h,
            )
        )
    out.append(
        Case(
            "if-match-stale",
            "PUT",
            "/fhir/Patient/{pid}",
            412,
            body=_with("Patient/update"),
            headers=(("If-Match", 'W/"999"'),),
        )
    )
    return out


def _bad_tokens(settings: Any, w: World) -> dict[str, str]:
    """Bearer tokens that must all be refused with 401."""
    from joserfc import jwt
    from joserfc.jwk import OctKey, RSAKey

    from smart_auth.tokens import issuer, signing_key

    sk = signing_key(settings)
    now = int(time.time())
    claims = {
        "iss": issuer(settings),
        "sub": "someone",
        "aud": settings.fhir_base,
        "client_id": "tests",
        "scope": PROVIDER_SCOPE,
        "exp": now + 600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "role": "provider",
        "fhirUser": w.ids["prac_ref"],
    }

    def signed(key: Any = None, header: dict[str, Any] | None = None, **changes: Any) -> str:
        return jwt.encode(
            header or {"alg": "RS256", "kid": sk.kid}, {**claims, **changes}, key or sk.key, algorithms=["RS256"]
        )

    other = RSAKey.generate_key(2048)
    return {
        "garbage": f"{SENTINEL}.garbage.{SENTINEL}",
        "one-part": SENTINEL,
        "expired": signed(exp=now - 5, iat=now - 600),
        "other-key": signed(other),
        "other-key-no-kid": signed(other, {"alg": "RS256"}),
        "wrong-aud": signed(aud=f"https://{SENTINEL}.example/fhir"),
        "wrong-iss": signed(iss=f"https://{SENTINEL}.example/auth"),
        "issued-in-future": signed(iat=now + 3600),
        "exp-not-a-number": signed(exp=SENTINEL),
        "unknown-kid": signed(header={"alg": "RS256", "kid": SENTINEL}),
        "alg-none": "eyJhbGciOiJub25lIn0." + signed().split(".")[1] + ".",
        "alg-hs256": jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(b"k" * 32), algorithms=["HS256"]),
        "too-long": "a." + "b" * 9000 + SENTINEL + ".c",
    }


TOKEN_TARGETS = [
    ("read", "GET", "/fhir/Patient/{pid}", None),
    ("search", "GET", "/fhir/Communication", None),
    ("create", "POST", "/fhir/Patient", _with("Patient")),
    ("update", "PUT", "/fhir/Patient/{pid}", _with("Patient/update")),
    ("delete", "DELETE", "/fhir/Patient/{pid}", None),
    ("mark-read", "POST", "/fhir/Communication/{cid}/$mark-read", None),
    ("unread-count", "GET", "/fhir/Communication/$unread-count", None),
    ("grant", "POST", "/fhir/Patient/{pid}/$grant-portal-access", None),
]
TOKEN_NAMES = [
    "garbage",
    "one-part",
    "expired",
    "other-key",
    "other-key-no-kid",
    "wrong-aud",
    "wrong-iss",
    "issued-in-future",
    "exp-not-a-number",
    "unknown-kid",
    "alg-none",
    "alg-hs256",
    "too-long",
]
RAW_AUTH = [
    ("basic", f"Basic {SENTINEL}"),
    ("bearer-empty", "Bearer "),
    ("scheme-only", "Bearer"),
    ("no-scheme", SENTINEL),
    ("two-tokens", f"Bearer a.b.c, Bearer {SENTINEL}"),
    ("non-ascii", "Bearer \u00ff\u00fe" + SENTINEL),
]


CASES = (
    _body_cases()
    + SPECIFIC_BODIES
    + _url_cases()
    + _method_cases()
    + _content_type_cases()
    + _search_cases()
    + _header_cases()
)


# -- the checks -----------------------------------------------------------------------------------


def _send(client: Any, w: World, case: Case, authorization: str | None = None) -> Any:
    headers = dict(case.headers)
    if authorization is not None:
        headers["Authorization"] = authorization
    elif case.who:
        headers["Authorization"] = f"Bearer {w.tokens[case.who]}"
    body = case.body(w) if callable(case.body) else case.body
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["data"] = body
        if case.ctype:
            kwargs["content_type"] = case.ctype
    return client.open(case.path.format(**w.ids), method=case.method, **kwargs)


def _assert_refused(resp: Any, status: int) -> dict[str, Any]:
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, (resp.status_code, text[:500])
    assert resp.mimetype == FHIR, resp.mimetype
    outcome = json.loads(text)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and all(i["severity"] == "error" and i["diagnostics"] for i in outcome["issue"])
    assert SENTINEL not in text, text[:500]
    assert SENTINEL.lower() not in text.lower()
    for name, value in resp.headers.items():
        assert SENTINEL not in value, name
    return outcome


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_writes_nothing(app: Any, client: Any, world: World, case: Case) -> None:
    before = _writes(app)
    resp = _send(client, world, case)
    _assert_refused(resp, case.status)
    assert _writes(app) == before


@pytest.mark.parametrize("target", TOKEN_TARGETS, ids=[t[0] for t in TOKEN_TARGETS])
def test_bad_bearer_tokens_are_401_and_write_nothing(
    app: Any, client: Any, settings: Any, world: World, target: tuple[str, str, str, Body]
) -> None:
    name, method, path, body = target
    tokens = _bad_tokens(settings, world)
    assert set(tokens) == set(TOKEN_NAMES)
    headers = [f"Bearer {tokens[n]}" for n in TOKEN_NAMES] + [h for _, h in RAW_AUTH] + [None]
    for authorization in headers:
        case = Case(f"token-{name}", method, path, 401, "", body)
        before = _writes(app)
        resp = _send(client, world, case, authorization if authorization is not None else "")
        _assert_refused(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="fhir"')
        assert _writes(app) == before, authorization


def test_every_routing_pattern_has_an_example() -> None:
    assert set(ROUTE_EXAMPLES) == {p for _, p, _, _ in ROUTES}


def test_the_same_requests_succeed_when_well_formed(app: Any, client: Any, world: World) -> None:
    """The baselines the bad cases break are themselves accepted (so each case fails for its one flaw)."""
    ok = [
        Case("create-patient", "POST", "/fhir/Patient", 201, "provider", _with("Patient")),
        Case("create-practitioner", "POST", "/fhir/Practitioner", 201, "admin", _with("Practitioner")),
        Case("create-organization", "POST", "/fhir/Organization", 201, "admin", _with("Organization")),
        Case("create-message", "POST", "/fhir/Communication", 201, "patient", _with("Communication")),
        Case("update-practitioner", "PUT", "/fhir/Practitioner/{prac}", 200, "admin", _with("Practitioner/update")),
        Case("update-organization", "PUT", "/fhir/Organization/{org}", 200, "admin", _with("Organization/update")),
        Case("search-post", "POST", "/fhir/Patient/_search", 200, body=b"_count=5&_sort=-_lastUpdated", ctype=FORM),
        Case("search-get-format", "GET", "/fhir/Patient?_count=5&_format=json", 200),
        Case("unread-count-format", "GET", "/fhir/Communication/$unread-count?_format=json", 200),
        Case("mark-read", "POST", "/fhir/Communication/{cid}/$mark-read", 200),
        Case(
            "create-charset",
            "POST",
            "/fhir/Patient",
            201,
            "provider",
            _with("Patient"),
            ctype="application/fhir+json; charset=UTF-8",
        ),
        Case(
            "create-with-bom", "POST", "/fhir/Patient", 201, "provider", lambda w: b"\xef\xbb\xbf" + _with("Patient")(w)
        ),
        Case(
            "create-nested-extensions-20",
            "POST",
            "/fhir/Patient",
            201,
            "provider",
            _raw("Patient", _nested_extension(20)),
        ),
    ]
    for case in ok:
        resp = _send(client, world, case)
        assert resp.status_code == case.status, (case.id, resp.get_data(as_text=True)[:500])
    # The patient update last, so that the world's stored copy stays at version 1 until now.
    resp = _send(
        client,
        world,
        Case(
            "update-patient",
            "PUT",
            "/fhir/Patient/{pid}",
            200,
            "provider",
            _with("Patient/update"),
            headers=(("If-Match", 'W/"1"'),),
        ),
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]

"""The authorization matrix: every role tries every interaction on every kind of resource.

Roles: anonymous, patient A, patient B, A's primary provider, an unrelated provider (B's),
staff working for A's provider, an administrator, an auditor, a provider whose account
was disabled after their token was issued, and B's provider holding a break-glass grant on
patient A (an account of their own). Kinds: Patient, Communication and AuditEvent
owned by A and by B, and the directory (Practitioner, Organization). Interactions: read,
vread, history, search by _id, create, update, delete, and the operations.

Each cell's expected answer is written down below, exactly (status, and for searches
whether the resource was in the Bundle). Outside a grant the answer is 404 (or an empty
search), never 403, so that nothing says "it exists". The test fails on any cell that
differs: an unexpected allow, and also an unexpected refusal. Destructive cells (delete,
password reset) act on fresh copies of the resource, so that the order of cells never
matters. ``MATRIX_DUMP=1`` prints the observed matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from fhirserver.core.principal import system_principal
from fhirserver.core.repository import Repository
from fhirserver.extensions import db
from tests.factories import make_patient, message_json, patient_json, practitioner_json, token_for
from tests.support import uid

FHIR = "application/fhir+json"
BROAD = {"patient": "launch/patient patient/*.cruds", "other": "user/*.cruds"}
ROLES = (
    "anonymous",
    "patient_a",
    "patient_b",
    "provider_a",
    "provider_b",
    "staff_a",
    "admin",
    "auditor",
    "disabled",
    "provider_b_break_glass",
    # Backend services (system principals, smart_auth.backend_services): read-only, and read-write.
    "backend_read",
    "backend_full",
)
BACKEND_SCOPES = {"backend_read": "system/*.rs", "backend_full": "system/*.cruds"}
KINDS = (
    "Patient:A",
    "Patient:B",
    "Communication:A",
    "Communication:B",
    "Practitioner",
    "Organization",
    "AuditEvent:A",
    "AuditEvent:B",
)
INTERACTIONS = ("read", "vread", "history", "search", "create", "update", "delete")
OPERATIONS = (
    "Communication:A $mark-read",
    "Communication:B $mark-read",
    "Communication $unread-count",
    "Patient:A $grant-portal-access",
    "Patient:B $grant-portal-access",
    "Patient:A $reset-portal-password",
    "Patient:B $reset-portal-password",
)


@dataclass
class World:
    app: Any
    settings: Any
    ids: dict[str, str]  # kind -> id
    refs: dict[str, str]  # role -> its own FHIR reference (Patient/x, Practitioner/y)
    tokens: dict[str, str | None]

    def fresh(self, kind: str, *, account: bool = False) -> str:
        """A new resource of ``kind`` owned like the original (for destructive cells)."""
        rtype, _, owner = kind.partition(":")
        with self.app.app_context():
            if rtype == "Patient":
                rid = make_patient(db.session, self.settings, self.refs[f"provider_{owner.lower()}"])
                if account:
                    from smart_auth import accounts

                    accounts.grant_portal_access(db.session, self.settings, patient_id=rid, first_name="Fresh")
            else:
                system = Repository(db.session, self.settings, system_principal("tests"))
                rid = system.create(rtype, _body(self, "admin", kind)).res_id
            db.session.commit()
            db.session.remove()
            return rid


def _body(world: World, role: str, kind: str) -> dict[str, Any]:
    """What ``role`` would create as a resource of ``kind``."""
    rtype, _, owner = kind.partition(":")
    patient = world.refs[f"patient_{owner.lower()}"] if owner else None
    if rtype == "Patient":
        return patient_json([world.refs[f"provider_{owner.lower()}"]], family=f"New{uid()}")
    if rtype == "Communication":
        me = world.refs.get(role) or world.refs[f"provider_{owner.lower()}"]
        if me.startswith("Patient/"):
            return message_json(me, world.refs[f"provider_{owner.lower()}"], patient, topic="Matrix")
        return message_json(me, patient, patient, topic="Matrix")
    if rtype == "Practitioner":
        return practitioner_json(family=f"Matrix{uid()}")
    if rtype == "Organization":
        return {"resourceType": "Organization", "name": f"Matrix {uid()}"}
    return {
        "resourceType": "AuditEvent",
        "type": {"code": "rest"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": True}],
        "source": {"observer": {"display": "x"}},
    }


def _backend_tokens(app: Any, settings: Any) -> dict[str, str | None]:
    """A system token per backend role, each of a backend client of its own (as /auth/token makes them)."""
    from smart_auth import clients
    from smart_auth.backend_services import issue_system_token

    out: dict[str, str | None] = {}
    with app.app_context():
        for role, scope in BACKEND_SCOPES.items():
            client_id = f"matrix-{role.replace('_', '-')}-{uid()}"
            jwks = {"keys": [{"kty": "EC", "crv": "P-384", "kid": "k", "x": "AAAA", "y": "AAAA"}]}
            clients.register_backend_client(db.session, client_id=client_id, name=role, scope=scope, jwks=jwks)
            out[role], _ = issue_system_token(db.session, settings, client_id=client_id, scope=scope)
        db.session.commit()
        db.session.remove()
    return out


@pytest.fixture(scope="module")
def world(app: Any, settings: Any) -> World:
    from smart_auth import accounts

    with app.app_context():
        s = db.session
        system = Repository(s, settings, system_principal("tests"))
        prac = {o: system.create("Practitioner", practitioner_json(family=f"Doc{o}{uid()}")).res_id for o in "AB"}
        gone = system.create("Practitioner", practitioner_json(family=f"Gone{uid()}")).res_id
        refs = {f"provider_{o.lower()}": f"Practitioner/{prac[o]}" for o in "AB"}
        pats = {}
        for o in "AB":
            gps = [refs[f"provider_{o.lower()}"]] + ([f"Practitioner/{gone}"] if o == "A" else [])
            pats[o] = system.create("Patient", patient_json(gps, family=f"Pat{o}{uid()}")).res_id
            refs[f"patient_{o.lower()}"] = f"Patient/{pats[o]}"
        org = system.create("Organization", {"resourceType": "Organization", "name": f"Org {uid()}"}).res_id
        users: dict[str, Any] = {}
        password = "correct horse battery staple"
        for role, kind, fhir_user, staff_of in (
            ("patient_a", "patient", refs["patient_a"], ()),
            ("patient_b", "patient", refs["patient_b"], ()),
            ("provider_a", "provider", refs["provider_a"], ()),
            ("provider_b", "provider", refs["provider_b"], ()),
            ("staff_a", "staff", None, (refs["provider_a"],)),
            ("admin", "admin", None, ()),
            ("auditor", "auditor", None, ()),
            ("disabled", "provider", f"Practitioner/{gone}", ()),
            ("provider_b_break_glass", "provider", refs["provider_b"], ()),
        ):
            users[role] = accounts.create_user(
                s,
                username=f"{role.replace('_', '')}{uid()}",
                password=password,
                role=kind,
                settings=settings,
                fhir_user=fhir_user,
                staff_of=staff_of,
            )
        s.commit()
        comms = {}
        for o in "AB":
            sender = Repository(s, settings, system_principal("tests"))
            comms[o] = sender.create(
                "Communication",
                message_json(
                    refs[f"provider_{o.lower()}"],
                    refs[f"patient_{o.lower()}"],
                    refs[f"patient_{o.lower()}"],
                    topic="Matrix original",
                ),
            ).res_id
        s.commit()
        user_ids = {role: u.id for role, u in users.items()}
        db.session.remove()
    tokens: dict[str, str | None] = {"anonymous": None}
    for role, user_id in user_ids.items():
        scope = BROAD["patient"] if role.startswith("patient") else BROAD["other"]
        patient = refs[role].split("/")[1] if role.startswith("patient") else None
        tokens[role] = token_for(app, settings, user_id, scope, patient=patient)
    tokens.update(_backend_tokens(app, settings))
    with app.app_context():
        accounts.set_active(db.session, accounts.get_user(db.session, user_ids["disabled"]), False)
        db.session.commit()
        db.session.remove()
    with app.app_context():  # B's provider (an account of their own) breaks the glass on patient A
        from fhirserver.break_glass import create_grant

        create_grant(
            db.session,
            settings,
            user_id=user_ids["provider_b_break_glass"],
            practitioner_ref=refs["provider_b"],
            patient_id=pats["A"],
            reason="Matrix: emergency care",
        )
        db.session.commit()
        db.session.remove()
    refs["provider_b_break_glass"] = refs["provider_b"]
    ids = {
        "Patient:A": pats["A"],
        "Patient:B": pats["B"],
        "Communication:A": comms["A"],
        "Communication:B": comms["B"],
        "Practitioner": prac["A"],
        "Organization": org,
    }
    world = World(app, settings, ids, refs, tokens)
    client = app.test_client()
    for o in "AB":  # an AuditEvent about each patient: the system reads them once
        headers = {"Authorization": f"Bearer {tokens[f'provider_{o.lower()}']}"}
        assert client.get(f"/fhir/Patient/{pats[o]}", headers=headers).status_code == 200
    auditor = {"Authorization": f"Bearer {tokens['auditor']}"}
    for o in "AB":
        bundle = client.get(f"/fhir/AuditEvent?patient=Patient/{pats[o]}", headers=auditor).get_json(force=True)
        world.ids[f"AuditEvent:{o}"] = bundle["entry"][0]["resource"]["id"]
    return world


def _headers(world: World, role: str, **extra: str) -> dict[str, str]:
    token = world.tokens[role]
    out = {"Authorization": f"Bearer {token}"} if token else {}
    out.update(extra)
    return out


def _outcome(resp: Any) -> None:
    """Every refusal is an OperationOutcome."""
    if resp.status_code >= 400:
        assert resp.get_json(force=True)["resourceType"] == "OperationOutcome", resp.data[:300]


def run_cell(world: World, client: Any, role: str, kind: str, interaction: str) -> str:
    rtype = kind.split(":")[0]
    rid = world.ids[kind]
    h = _headers(world, role)
    if interaction == "read":
        resp = client.get(f"/fhir/{rtype}/{rid}", headers=h)
    elif interaction == "vread":
        resp = client.get(f"/fhir/{rtype}/{rid}/_history/1", headers=h)
    elif interaction == "history":
        resp = client.get(f"/fhir/{rtype}/{rid}/_history", headers=h)
    elif interaction == "search":
        resp = client.get(f"/fhir/{rtype}?_id={rid}", headers=h)
        _outcome(resp)
        if resp.status_code == 200:
            found = [e["resource"]["id"] for e in resp.get_json(force=True).get("entry", [])]
            return "200+" if rid in found else "200-"
        return str(resp.status_code)
    elif interaction == "create":
        resp = client.post(
            f"/fhir/{rtype}", json=_body(world, role, kind), headers=_headers(world, role, **{"Content-Type": FHIR})
        )
    elif interaction == "update":
        with world.app.app_context():
            current = Repository(db.session, world.settings, system_principal("tests")).read(rtype, rid).json()
            db.session.remove()
        resp = client.put(f"/fhir/{rtype}/{rid}", json=current, headers=_headers(world, role, **{"Content-Type": FHIR}))
    elif interaction == "delete":
        target = world.fresh(kind) if rtype in ("Patient", "Practitioner", "Organization") else rid
        resp = client.delete(f"/fhir/{rtype}/{target}", headers=h)
    else:
        raise AssertionError(interaction)
    _outcome(resp)
    return str(resp.status_code)


def run_operation(world: World, client: Any, role: str, op: str) -> str:
    target, name = op.split(" ")
    rtype = target.split(":")[0]
    h = _headers(world, role)
    if ":" not in target:
        resp = client.get(f"/fhir/{rtype}/{name}", headers=h)
    else:
        rid = world.fresh(target, account=True) if name == "$reset-portal-password" else world.ids[target]
        resp = client.post(f"/fhir/{rtype}/{rid}/{name}", headers=h)
    _outcome(resp)
    return str(resp.status_code)


# -- what each role may do -------------------------------------------------------------------------
# Columns: read vread history search create update delete; "200+"/"200-": the search found the
# resource / did not. The operations row follows OPERATIONS above. Reviewed cell by cell:
# - outside a grant: 404 / an empty search, the same as for a resource that does not exist;
# - 403 only where the refusal does not depend on the resource (a role never has the
#   interaction on the type, or the content written would lie outside the grant);
# - 405: sent messages are immutable, AuditEvents are written by the server only;
# - 409: A's primary provider grants portal access to a patient who already has an account;
# - 422: a provider writing about another provider's patient gets "unknown patient";
# - staff register and update their providers' patients but never delete, send or grant;
# - a disabled account's token is refused at once (401), like no token at all;
# - a break-glass grant (B's provider on patient A) opens A's Patient and Communications for
#   reading and searching only: writes and state-changing operations on them stay 404/403/422;
# - backend services (system principals) reach every record of the types their system/ scopes
#   name, and nothing else: system/*.rs reads (AuditEvents too) but writes nothing (403);
#   system/*.cruds writes too, except what no one may (sent messages, AuditEvents: 405).
MATRIX = """
anonymous
    Patient:A          401  401  401  401  401  401  401
    Patient:B          401  401  401  401  401  401  401
    Communication:A    401  401  401  401  401  401  401
    Communication:B    401  401  401  401  401  401  401
    Practitioner       401  401  401  401  401  401  401
    Organization       401  401  401  401  401  401  401
    AuditEvent:A       401  401  401  401  401  401  401
    AuditEvent:B       401  401  401  401  401  401  401
    operations         401  401  401  401  401  401  401
patient_a
    Patient:A          200  200  200  200+ 403  403  403
    Patient:B          404  404  404  200- 403  403  403
    Communication:A    200  200  200  200+ 201  405  405
    Communication:B    404  404  404  200- 403  405  405
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         200  404  200  403  403  403  403
patient_b
    Patient:A          404  404  404  200- 403  403  403
    Patient:B          200  200  200  200+ 403  403  403
    Communication:A    404  404  404  200- 403  405  405
    Communication:B    200  200  200  200+ 201  405  405
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         404  200  200  403  403  403  403
provider_a
    Patient:A          200  200  200  200+ 201  200  204
    Patient:B          404  404  404  200- 403  404  404
    Communication:A    200  200  200  200+ 201  405  405
    Communication:B    404  404  404  200- 422  405  405
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         200  404  200  409  404  200  404
provider_b
    Patient:A          404  404  404  200- 403  404  404
    Patient:B          200  200  200  200+ 201  200  204
    Communication:A    404  404  404  200- 422  405  405
    Communication:B    200  200  200  200+ 201  405  405
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         404  200  200  404  409  404  200
staff_a
    Patient:A          200  200  200  200+ 201  200  403
    Patient:B          404  404  404  200- 403  404  403
    Communication:A    200  200  200  200+ 403  405  403
    Communication:B    404  404  404  200- 403  405  403
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         200  404  200  403  403  403  403
admin
    Patient:A          403  403  403  403  403  403  403
    Patient:B          403  403  403  403  403  403  403
    Communication:A    403  403  403  403  403  405  403
    Communication:B    403  403  403  403  403  405  403
    Practitioner       200  200  200  200+ 201  200  204
    Organization       200  200  200  200+ 201  200  204
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         403  403  403  403  403  403  403
auditor
    Patient:A          403  403  403  403  403  403  403
    Patient:B          403  403  403  403  403  403  403
    Communication:A    403  403  403  403  403  405  403
    Communication:B    403  403  403  403  403  405  403
    Practitioner       403  403  403  403  403  403  403
    Organization       403  403  403  403  403  403  403
    AuditEvent:A       200  200  200  200+ 405  405  405
    AuditEvent:B       200  200  200  200+ 405  405  405
    operations         403  403  403  403  403  403  403
disabled
    Patient:A          401  401  401  401  401  401  401
    Patient:B          401  401  401  401  401  401  401
    Communication:A    401  401  401  401  401  401  401
    Communication:B    401  401  401  401  401  401  401
    Practitioner       401  401  401  401  401  401  401
    Organization       401  401  401  401  401  401  401
    AuditEvent:A       401  401  401  401  401  401  401
    AuditEvent:B       401  401  401  401  401  401  401
    operations         401  401  401  401  401  401  401
provider_b_break_glass
    Patient:A          200  200  200  200+ 403  404  404
    Patient:B          200  200  200  200+ 201  200  204
    Communication:A    200  200  200  200+ 422  405  405
    Communication:B    200  200  200  200+ 201  405  405
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       403  403  403  403  405  405  405
    AuditEvent:B       403  403  403  403  405  405  405
    operations         404  200  200  404  409  404  200
backend_read
    Patient:A          200  200  200  200+ 403  403  403
    Patient:B          200  200  200  200+ 403  403  403
    Communication:A    200  200  200  200+ 403  405  403
    Communication:B    200  200  200  200+ 403  405  403
    Practitioner       200  200  200  200+ 403  403  403
    Organization       200  200  200  200+ 403  403  403
    AuditEvent:A       200  200  200  200+ 405  405  405
    AuditEvent:B       200  200  200  200+ 405  405  405
    operations         403  403  200  403  403  403  403
backend_full
    Patient:A          200  200  200  200+ 201  200  204
    Patient:B          200  200  200  200+ 201  200  204
    Communication:A    200  200  200  200+ 201  405  405
    Communication:B    200  200  200  200+ 201  405  405
    Practitioner       200  200  200  200+ 201  200  204
    Organization       200  200  200  200+ 201  200  204
    AuditEvent:A       200  200  200  200+ 405  405  405
    AuditEvent:B       200  200  200  200+ 405  405  405
    operations         200  200  200  403  403  403  403
"""


def _parse(text: str) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, dict[str, str]]]:
    cells: dict[str, dict[str, dict[str, str]]] = {}
    ops: dict[str, dict[str, str]] = {}
    role = ""
    for line in text.strip().splitlines():
        if not line.startswith(" "):
            role = line.strip()
            cells[role] = {}
            continue
        name, *values = line.split()
        if name == "operations":
            ops[role] = dict(zip(OPERATIONS, values, strict=True))
        else:
            cells[role][name] = dict(zip(INTERACTIONS, values, strict=True))
    return cells, ops


EXPECTED, EXPECTED_OPS = _parse(MATRIX)


def test_the_matrix_covers_every_role_kind_and_interaction() -> None:
    assert set(EXPECTED) == set(ROLES) == set(EXPECTED_OPS)
    assert all(set(EXPECTED[r]) == set(KINDS) for r in ROLES)


def observed(world: World) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, dict[str, str]]]:
    client = world.app.test_client()
    cells = {
        role: {kind: {i: run_cell(world, client, role, kind, i) for i in INTERACTIONS} for kind in KINDS}
        for role in ROLES
    }
    ops = {role: {op: run_operation(world, client, role, op) for op in OPERATIONS} for role in ROLES}
    return cells, ops


def test_authorization_matrix(world: World) -> None:
    cells, ops = observed(world)
    if os.environ.get("MATRIX_DUMP"):
        for role in ROLES:
            print(f"\n{role}")
            for kind in KINDS:
                print(f"  {kind:18} " + " ".join(f"{i}={cells[role][kind][i]}" for i in INTERACTIONS))
            print("  ops " + " ".join(f"{op}={ops[role][op]}" for op in OPERATIONS))
    wrong = [
        f"{role} {kind} {i}: expected {EXPECTED[role][kind][i]}, got {cells[role][kind][i]}"
        for role in ROLES
        for kind in KINDS
        for i in INTERACTIONS
        if cells[role][kind][i] != EXPECTED[role][kind][i]
    ]
    wrong += [
        f"{role} {op}: expected {EXPECTED_OPS[role][op]}, got {ops[role][op]}"
        for role in ROLES
        for op in OPERATIONS
        if ops[role][op] != EXPECTED_OPS[role][op]
    ]
    allows = [w for w in wrong if " got 2" in w and "200-" not in w.split("got ")[1]]
    assert not wrong, f"{len(allows)} unexpected allow(s), {len(wrong)} cell(s) differ:\n" + "\n".join(wrong)


def test_a_patch_is_decided_exactly_like_the_update_column(world: World) -> None:
    """PATCH takes the update path: for every role and kind, a patch that leaves the content as it
    is (a ``test`` of the id) answers what the matrix's update cell says."""
    client = world.app.test_client()
    wrong = []
    for role in ROLES:
        for kind in KINDS:
            rtype, rid = kind.split(":")[0], world.ids[kind]
            ops = [{"op": "test", "path": "/id", "value": rid}]
            headers = _headers(world, role, **{"Content-Type": "application/json-patch+json"})
            resp = client.patch(f"/fhir/{rtype}/{rid}", json=ops, headers=headers)
            _outcome(resp)
            if str(resp.status_code) != EXPECTED[role][kind]["update"]:
                wrong.append(f"{role} {kind}: update {EXPECTED[role][kind]['update']}, patch {resp.status_code}")
    assert not wrong, "\n".join(wrong)

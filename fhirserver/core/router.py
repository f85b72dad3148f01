"""One routing table for the whole FHIR REST surface, one error path, one audit path.

Each route maps a method and a path pattern to an interaction handler in
``fhirserver.core.interactions``. ``dispatch`` runs the handler in the caller's
transaction, records the AuditEvent (for writes in the same transaction, so that
the audit commits with the change), commits, and turns any FhirError into an
OperationOutcome. It knows no web framework: the Flask blueprint only adapts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core import access, audit, audit_batch, audit_log, capability, interactions
from fhirserver.core.errors import FhirError
from fhirserver.core.http import FhirRequest, FhirResponse
from fhirserver.core.principal import Principal
from fhirserver.core.repository import Repository
from fhirserver.core.scopes import ScopeSet

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One interaction in progress: what the handler needs, and what it tells the audit."""

    request: FhirRequest
    session: Session
    settings: Settings
    principal: Principal
    params: dict[str, str]
    interaction: str
    repo: Repository
    patient_ref: str | None = None
    res_id: str | None = None
    query_names: list[str] = field(default_factory=list)
    operation: str | None = None

    @property
    def res_type(self) -> str | None:
        return self.params.get("type")


Handler = Callable[[Call], FhirResponse]

# (method, pattern, interaction name, handler). Order matters: literals before :id.
ROUTES: list[tuple[str, str, str, Handler]] = [
    ("GET", "metadata", "capabilities", capability.capabilities),
    ("GET", ":type", "search-type", interactions.search),
    ("POST", ":type/_search", "search-type", interactions.search),
    ("POST", ":type", "create", interactions.create),
    ("PUT", ":type", "conditional-update", interactions.conditional_update),
    ("DELETE", ":type", "conditional-delete", interactions.conditional_delete),
    ("GET", ":type/$:op", "operation", interactions.type_operation),
    ("POST", ":type/$:op", "operation", interactions.type_operation),
    ("GET", ":type/:id", "read", interactions.read),
    ("PUT", ":type/:id", "update", interactions.update),
    ("PATCH", ":type/:id", "patch", interactions.patch),
    ("DELETE", ":type/:id", "delete", interactions.delete),
    ("GET", ":type/:id/_history", "history-instance", interactions.history),
    ("GET", ":type/:id/_history/:vid", "vread", interactions.vread),
    ("GET", ":type/:id/$:op", "operation", interactions.instance_operation),
    ("POST", ":type/:id/$:op", "operation", interactions.instance_operation),
]
WRITES = frozenset({"create", "update", "patch", "delete", "conditional-update", "conditional-delete"})
# Interactions that only read: their audit records go through the batch writer, and the
# response waits for its commit. Writes and operations (which may write) keep theirs in
# their own transaction.
BATCHED = frozenset({"read", "vread", "history-instance", "search-type"})
# Paths spelled out in full (``metadata``): only their own routes apply, so that
# ``POST metadata`` is a 405 rather than a create on a resource type named "metadata".
LITERAL_PATHS = frozenset(p for _, p, _, _ in ROUTES if not any(x.startswith((":", "$:")) for x in p.split("/")))


def match(method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
    """Find the route for a request; returns (interaction, handler, path params)."""
    segments = [s for s in path.split("/") if s]
    joined = "/".join(segments)
    literal = joined if joined in LITERAL_PATHS else None
    method_seen = False
    for r_method, pattern, name, handler in ROUTES:
        parts = pattern.split("/")
        if len(parts) != len(segments) or (literal is not None and pattern != literal):
            continue
        params: dict[str, str] = {}
        for part, seg in zip(parts, segments, strict=True):
            if part.startswith("$:"):
                if not seg.startswith("$"):
                    break
                params["op"] = seg
            elif part.startswith(":"):
                if seg.startswith(("$", "_")):
                    break
                params[part[1:]] = seg
            elif part != seg:
                break
        else:
            if r_method == method:
                return name, handler, params
            method_seen = True
    if method_seen:
        raise FhirError(405, "not-supported", f"{method} is not supported on this path")
    return None


def dispatch(req: FhirRequest, session: Session, settings: Settings, principal: Principal | None) -> FhirResponse:
    """Run one FHIR interaction. ``principal`` is None only for the unauthenticated /metadata."""
    try:
        found = match(req.method, req.path)
        if found is None:
            raise FhirError(404, "not-found", "No FHIR interaction at this path")
        name, handler, params = found
        if principal is None:
            if name != "capabilities":
                raise FhirError(401, "login", "Authentication is required")
            return handler(
                Call(req, session, settings, _anonymous(), params, name, Repository(session, settings, _anonymous()))
            )
    except FhirError as exc:
        return error_response(exc)
    call = Call(req, session, settings, principal, params, name, Repository(session, settings, principal))
    try:
        try:
            response = handler(call)
        finally:
            _settle_grant(call)
        if name in BATCHED:
            return _send_after_audit(call, response)
        if name != "capabilities":
            _audit(call, response.status)
        session.commit()
        return response
    except FhirError as exc:
        session.rollback()
        _audit_failure(call, exc.status)
        return error_response(exc)
    except IntegrityError:
        # A write raced another one to the same new row (two PUTs creating one id): the
        # loser's transaction is rolled back whole and it may retry, which then updates.
        session.rollback()
        log.warning("a %s lost a race to another write of the same record", name)
        _audit_failure(call, 409)
        return error_response(
            FhirError(409, "conflict", "Another request wrote this resource at the same time; send it again")
        )
    except SQLAlchemyError:
        session.rollback()
        log.exception("database error during %s", name)
        _audit_failure(call, 500)
        return error_response(FhirError(500, "exception", "The server could not complete the request"))


def _settle_grant(call: Call) -> None:
    """A read may have left the token's grant to its own query (``PendingGrant``); if the
    query did not run (an error before it), check the grant now: 401 beats any other answer."""
    pending = call.principal.pending
    if pending is not None:
        pending.settle(call.session)


def _anonymous() -> Principal:
    return Principal(role="anonymous", scopes=ScopeSet.parse(""))


def _send_after_audit(call: Call, response: FhirResponse) -> FhirResponse:
    """A read's response goes out only once its audit record has committed (group commit).

    The read's own transaction ends first (on SQLite it holds the one write lock, which
    the batch writer needs); a batch that fails answers 500, never a silent loss.
    """
    row = _audit_row(call, response.status)
    call.session.commit()
    if row is None:
        return response
    try:
        audit_batch.writer_for(call.session.get_bind()).write([row])  # type: ignore[arg-type]
    except audit_batch.AuditWriteFailed:
        log.error("the audit record of a %s could not be stored; the response is withheld", call.interaction)
        return error_response(FhirError(500, "exception", "The server could not complete the request"))
    return response


def _audit(call: Call, status: int) -> None:
    row = _audit_row(call, status)
    if row is not None:
        audit_log.append(call.session, row)


def _audit_row(call: Call, status: int) -> dict[str, Any] | None:
    rtype = call.res_type
    if rtype is None:
        return None
    # Break-glass access is recorded as emergency treatment (access.audit_purpose decides).
    purpose = access.audit_purpose(call.session, call.principal, call.patient_ref, rtype)
    principal = replace(call.principal, purpose_of_use=purpose)
    return audit.rest_record(
        principal,
        interaction=call.interaction,
        status=status,
        res_type=rtype,
        res_id=call.res_id or call.params.get("id"),
        patient_ref=call.patient_ref,
        query_params=call.query_names or None,
        operation=call.operation or call.params.get("op"),
    )


def _audit_failure(call: Call, status: int) -> None:
    """Failures are audited too, in a transaction of their own (the failed one was rolled back)."""
    try:
        _audit(call, status)
        call.session.commit()
    except SQLAlchemyError:
        call.session.rollback()
        log.exception("could not write the audit record of a failed interaction")


def error_response(exc: FhirError) -> FhirResponse:
    resp = FhirResponse.json(exc.status, exc.to_operation_outcome())
    resp.headers.update(exc.headers)
    return resp


def route_table() -> list[tuple[str, str, str]]:
    """The REST surface, for documentation and the CapabilityStatement."""
    return [(m, p, n) for m, p, n, _ in ROUTES]


__all__ = ["ROUTES", "Call", "dispatch", "match", "route_table"]

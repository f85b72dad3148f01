"""BALP-shaped AuditEvents for every PHI interaction and every security event.

AuditEvents are written by the server itself, readable only by an auditor. They name
who (user, client, address), what (the interaction, the resource or the query's
parameter *names*), and the outcome; they never carry message bodies, tokens,
passwords or usernames. Query values are PHI (``name=Smith``), so a search is recorded by its parameter names only.

Events are rows of the append-only audit table (fhirserver.core.audit_log), not
resources. Writes are audited in the write transaction (the audit row commits or rolls
back with the change). Reads and searches go through the per-process batch writer
(fhirserver.core.audit_batch), which the response waits for; failures are audited in
a transaction of their own.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from fhirserver.core import audit_log
from fhirserver.core.principal import Principal

DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST_TYPE = {"system": DCM, "code": "110112", "display": "Query"}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
SECURITY_TYPE = {"system": DCM, "code": "110114", "display": "User Authentication"}
ACTIONS = {
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "search-type": "E",
    "search-system": "E",
    "create": "C",
    "update": "U",
    "patch": "U",
    "conditional-update": "U",
    "conditional-delete": "D",
    "delete": "D",
    "operation": "E",
}
OUTCOMES = {"success": "0", "minor": "4", "serious": "8"}


def outcome_for_status(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _agents(principal: Principal | None, user_id: str | None, client_id: str | None, address: str | None):
    agents: list[dict[str, Any]] = []
    who_user = (principal.fhir_user if principal else None) or None
    uid = (principal.user_id if principal else None) or user_id
    if uid or who_user:
        agent: dict[str, Any] = {
            "type": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
            },
            "requestor": True,
            "who": {"identifier": {"system": "urn:fhirserver:user", "value": uid or "unknown"}},
        }
        if who_user:
            agent["who"]["reference"] = who_user
        if principal is not None:
            agent["purposeOfUse"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                            "code": principal.purpose_of_use,
                        }
                    ]
                }
            ]
        agents.append(agent)
    cid = (principal.client_id if principal else None) or client_id
    addr = (principal.address if principal else None) or address
    client: dict[str, Any] = {
        "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
        "requestor": not agents,
        "who": {"identifier": {"system": "urn:fhirserver:client", "value": cid or "none"}},
    }
    if addr:
        client["network"] = {"address": addr, "type": "2"}
    agents.append(client)
    agents.append(
        {
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "requestor": False,
            "who": {"display": "fhirserver"},
        }
    )
    return agents


def _finish(event: dict[str, Any]) -> dict[str, Any]:
    """Give the event its id and meta, and turn it into its audit-table row."""
    event["id"] = uuid.uuid4().hex
    event["meta"] = {"versionId": "1", "lastUpdated": event["recorded"]}
    return audit_log.row_for(event)


def _store(session: Session, event: dict[str, Any]) -> str:
    """Insert an AuditEvent in the caller's transaction (never through authorization: the server writes it)."""
    row = _finish(event)
    audit_log.append(session, row)
    return str(row["event_id"])


def rest_event(session: Session, principal: Principal | None, **kwargs: Any) -> str:
    """Record one FHIR REST interaction in the caller's transaction (see :func:`rest_record`)."""
    row = rest_record(principal, **kwargs)
    audit_log.append(session, row)
    return str(row["event_id"])


def rest_record(
    principal: Principal | None,
    *,
    interaction: str,
    status: int,
    res_type: str | None = None,
    res_id: str | None = None,
    patient_ref: str | None = None,
    query_params: list[str] | None = None,
    operation: str | None = None,
) -> dict[str, Any]:
    """The audit row of one FHIR REST interaction (BALP: type rest, subtype the interaction).

    Built, not stored: the router hands reads and searches to the batch writer
    (fhirserver.core.audit_batch) and inserts writes' rows in the write transaction.
    """
    now = datetime.now(UTC)
    subtype = "operation" if operation else interaction
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": INTERACTION_SYSTEM, "code": subtype}],
        "action": ACTIONS.get(interaction, "E"),
        "recorded": now.isoformat(timespec="milliseconds"),
        "outcome": outcome_for_status(status),
        "agent": _agents(principal, None, None, None),
        "source": {"observer": {"display": "fhirserver"}},
    }
    entities: list[dict[str, Any]] = []
    if patient_ref:
        entities.append(
            {
                "what": {"reference": patient_ref},
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
    if res_type:
        data: dict[str, Any] = {
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "4",
                "display": "Domain Resource",
            },
        }
        if res_id:
            data["what"] = {"reference": f"{res_type}/{res_id}"}
        else:
            data["what"] = {"display": res_type}
        if query_params:
            # Parameter names only: their values may be PHI.
            data["description"] = "search on " + ",".join(sorted(set(query_params)))
        if operation:
            data["name"] = operation
        entities.append(data)
    if principal and principal.request_id:
        entities.append(
            {
                "what": {"identifier": {"system": "urn:fhirserver:request-id", "value": principal.request_id}},
                "type": {"system": DCM, "code": "110180"},
            }
        )
    if entities:
        event["entity"] = entities
    return _finish(event)


def security_event(
    session: Session,
    *,
    subtype: str,
    outcome: str,
    user_id: str | None = None,
    client_id: str | None = None,
    address: str | None = None,
    description: str = "",
    principal: Principal | None = None,
    patient_ref: str | None = None,
) -> str:
    """Record a login, logout, password change, token issue/refresh/revoke, consent or refused access.

    ``outcome`` is "0" (success), "4" (minor failure) or "8" (serious failure).
    ``description`` is a fixed phrase chosen by the caller: no usernames, no secrets.
    ``patient_ref`` names the patient whose account or data the event concerns.
    """
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": SECURITY_TYPE,
        "subtype": [{"system": "urn:fhirserver:security-event", "code": subtype}],
        "action": "E",
        "recorded": now.isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "agent": _agents(principal, user_id, client_id, address),
        "source": {"observer": {"display": "fhirserver"}},
    }
    if description:
        event["outcomeDesc"] = description
    if patient_ref:
        event["entity"] = [
            {
                "what": {"reference": patient_ref},
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        ]
    return _store(session, event)

"""The CapabilityStatement, generated from what really works: the routing table,
the search parameter registry, the operation registry and the served types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhirserver.config import Settings
from fhirserver.core.hooks import OPERATIONS
from fhirserver.core.http import FhirResponse
from fhirserver.core.resource_types import NON_DELETABLE, NON_UPDATABLE, SERVED_TYPES

if TYPE_CHECKING:
    from fhirserver.core.router import Call

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SOFTWARE_VERSION = "0.1.0"


def _interactions(res_type: str) -> list[dict[str, str]]:
    if res_type == "AuditEvent":
        codes = ["read", "vread", "history-instance", "search-type"]
    else:
        codes = ["read", "vread", "history-instance", "create", "search-type"]
        if res_type not in NON_UPDATABLE:
            codes += ["update", "patch"]
        if res_type not in NON_DELETABLE:
            codes.append("delete")
    return [{"code": c} for c in codes]


def _search_params(res_type: str) -> list[dict[str, str]]:
    from fhirserver.search.params import REGISTRY

    out = []
    for name, sp in sorted(REGISTRY.get(res_type, {}).items()):
        out.append({"name": name, "type": sp.type})
    return out


def _operations(res_type: str) -> list[dict[str, str]]:
    """Each operation with the scope it needs (SMART has no standard place for that: documentation)."""
    found = sorted((name, op) for (rtype, name, _level), op in OPERATIONS.items() if rtype == res_type)
    return [
        {
            "name": n.lstrip("$"),
            "definition": f"http://fhir-webmail.example/OperationDefinition/{res_type}-{n.lstrip('$')}",
            "documentation": op.scope_text(res_type),
        }
        for n, op in found
    ]


def capabilities(call: Call) -> FhirResponse:
    """The ``GET metadata`` interaction."""
    return FhirResponse.json(200, capability_statement(call.settings))


def capability_statement(settings: Settings) -> dict[str, Any]:
    base = settings.base_url
    resources = []
    for rtype in SERVED_TYPES:
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": _interactions(rtype),
            "versioning": "versioned",
            "readHistory": True,
            # Update-as-create (a client-chosen id) works for system principals (backend
            # services with system/ scopes) only: a user's PUT of an unknown id is 404.
            "updateCreate": True,
            # Conditional interactions match with the caller's own search (search permission
            # on the type is needed too), strictly, inside the grant; several matches are 412.
            "conditionalCreate": rtype != "AuditEvent",
            "conditionalUpdate": rtype not in NON_UPDATABLE and rtype != "AuditEvent",
            "conditionalDelete": "single" if rtype not in NON_DELETABLE and rtype != "AuditEvent" else "not-supported",
            "searchParam": _search_params(rtype),
        }
        ops = _operations(rtype)
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "fhir-webmail-server", "version": SOFTWARE_VERSION},
        "implementation": {"description": "FHIR server with secure WebMail", "url": settings.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    # Browser apps on a registered origin may call the API (fhirserver.web.cors).
                    "cors": True,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "authorize", "valueUri": f"{base}/auth/authorize"},
                                {"url": "token", "valueUri": f"{base}/auth/token"},
                            ],
                        }
                    ],
                },
                "resource": resources,
            }
        ],
    }

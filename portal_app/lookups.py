"""Display names for references (Practitioner/1 -> "Dr Ada Lovelace"), read through the API.

Names are looked up with the user's own token, so a user never learns a name the API
would not show them; a reference that cannot be read is shown generically. Each
request caches what it read, so a list of fifty messages costs one read per person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import g

from portal_app.fhir_api import ApiError, FhirApi
from portal_app.webmail import format_name

GENERIC = {"Practitioner": "Provider", "Patient": "Patient", "Organization": "Organization"}


def _cache() -> dict[str, dict[str, Any] | None]:
    if "portal_resources" not in g:
        g.portal_resources = {}
    cache: dict[str, dict[str, Any] | None] = g.portal_resources
    return cache


def remember(resource: dict[str, Any]) -> None:
    """Put a resource read elsewhere in this request's cache."""
    if resource.get("resourceType") and resource.get("id"):
        _cache()[f"{resource['resourceType']}/{resource['id']}"] = resource


def resource(client: FhirApi, ref: str) -> dict[str, Any] | None:
    """The referenced resource, or None when it cannot be read (404/403); 401 propagates."""
    cache = _cache()
    if ref in cache:
        return cache[ref]
    res_type, _, res_id = ref.partition("/")
    found: dict[str, Any] | None = None
    if res_type in GENERIC and res_id:
        try:
            found = client.read(res_type, res_id)
        except ApiError as exc:
            if exc.status == 401:
                raise
            found = None
    cache[ref] = found
    return found


def name(client: FhirApi, ref: str | None) -> str:
    if not ref:
        return ""
    found = resource(client, ref)
    shown = format_name(found)
    if shown:
        return shown
    return GENERIC.get(ref.partition("/")[0], "Unknown")


def names(client: FhirApi, refs: Iterable[str | None]) -> dict[str, str]:
    return {ref: name(client, ref) for ref in dict.fromkeys(r for r in refs if r)}

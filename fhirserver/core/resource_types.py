"""The resource types this server serves, and the interactions a type refuses outright.

Which principal may do what on each type is decided in ``fhirserver.core.access``; this
module only says what exists (types present in both R4 and R4B) and what no one may do.
"""

from __future__ import annotations

SERVED_TYPES = ("Patient", "Practitioner", "Organization", "Communication", "AuditEvent")
NON_DELETABLE = {"Communication": "A sent message cannot be deleted (retraction comes later)"}
NON_UPDATABLE = {"Communication": "A sent message cannot be changed"}

# SMART 2 granular scopes (``patient/Communication.rs?category=system|code``): the search
# parameters a scope on each type may filter by. This is part of each type's declaration:
# every served type has an entry (empty: no filters), and a type with the ``category`` or
# ``code`` token parameters SMART names lists them (tests/fhir/test_granular_scopes.py
# checks both, so a type added later without its entry fails). Each name must be a token
# parameter of the type in ``fhirserver.search.params.REGISTRY``: access.py answers the
# filter from that parameter's index rows, so a filtered scope matches exactly what the
# same search would. Any other query in a scope is ``invalid_scope``.
SCOPE_FILTERS: dict[str, tuple[str, ...]] = {
    "Patient": (),
    "Practitioner": (),
    "Organization": (),
    "Communication": ("category",),
    "AuditEvent": (),
}

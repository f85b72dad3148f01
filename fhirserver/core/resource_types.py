"""The resource types this server serves, and the interactions a type refuses outright.

Which principal may do what on each type is decided in ``fhirserver.core.access``; this
module only says what exists (types present in both R4 and R4B) and what no one may do.
"""

from __future__ import annotations

SERVED_TYPES = ("Patient", "Practitioner", "Organization", "Communication", "AuditEvent")
NON_DELETABLE = {"Communication": "A sent message cannot be deleted (retraction comes later)"}
NON_UPDATABLE = {"Communication": "A sent message cannot be changed"}

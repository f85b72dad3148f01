"""Registers the domain rules and operations with the FHIR core.

Imported by the repository module itself, so that every process that writes through
the repository (web, worker, CLI, seeding, tests) runs the same rules.
"""

from __future__ import annotations

from fhirserver.core import interactions
from fhirserver.core.repository import register_rules
from fhirserver.webmail import operations, outbox, rules

register_rules("Communication", before=rules.before_communication, after=outbox.after_communication)
register_rules("Patient", before=rules.before_patient)

interactions.register_operation("Communication", "$mark-read", "instance", operations.mark_read)
interactions.register_operation("Communication", "$mark-unread", "instance", operations.mark_unread)
interactions.register_operation("Communication", "$unread-count", "type", operations.unread_count)
interactions.register_operation("Patient", "$grant-portal-access", "instance", operations.grant_portal_access)
interactions.ENTRY_DECORATORS["Communication"] = operations.read_state_extensions

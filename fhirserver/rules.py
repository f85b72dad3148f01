"""Registers the domain rules and operations with the FHIR core (``fhirserver.core.hooks``).

Loaded by the repository on first use, so that every process that writes through the
repository (web, worker, CLI, seeding, tests) runs the same rules. Each operation states
the scope permission it needs on its type (``permission``): the core checks it before the
handler runs, and the CapabilityStatement and docs/security.md publish it.
"""

from __future__ import annotations

from fhirserver import break_glass
from fhirserver.core.hooks import ENTRY_DECORATORS, register_operation, register_rules, register_search_planner
from fhirserver.webmail import chart, inbox, mailbox, operations, outbox, rules

register_rules("Communication", before=rules.before_communication, after=outbox.after_communication)
register_rules("Communication", after=mailbox.after_communication)  # the recipients' mailbox rows
register_rules("Communication", after=chart.after_communication)  # the subject's chart rows
register_rules("Patient", before=rules.before_patient)

register_operation(
    "Communication",
    "$mark-read",
    "instance",
    operations.mark_read,
    permission="u",
    summary="Marks the message read for the signed-in user.",
)
register_operation(
    "Communication",
    "$mark-unread",
    "instance",
    operations.mark_unread,
    permission="u",
    summary="Marks the message unread for the signed-in user.",
)
register_operation(
    "Communication",
    "$unread-count",
    "type",
    operations.unread_count,
    permission="r",
    methods=("GET", "POST"),
    summary="The signed-in user's count of unread WebMail.",
)
register_operation(
    "Patient",
    "$grant-portal-access",
    "instance",
    operations.grant_portal_access,
    permission="u",
    summary="Creates the patient's portal account (providers only).",
)
register_operation(
    "Patient",
    "$reset-portal-password",
    "instance",
    operations.reset_portal_password,
    permission="u",
    summary="Issues a new one-time portal password (providers only).",
)
register_operation(
    "Patient",
    break_glass.OPERATION,
    "type",
    break_glass.break_glass,
    permission="r",
    summary="Break-glass: emergency access to a patient outside one's care, found by exact identifier and "
    "birth date, with a reason (providers only; audited ETREAT, administrators alerted).",
)
ENTRY_DECORATORS["Communication"] = operations.read_state_extensions
register_search_planner("Communication", inbox.plan)  # the inbox page from the mailbox rows
register_search_planner("Communication", chart.plan)  # a patient's chart from the chart rows

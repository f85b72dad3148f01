"""The WebMail rules, run by the repository inside the write transaction.

A rule violation is a 422 OperationOutcome that says what is wrong; a forged
sender or subject is a 403. A patient outside the sender's care is answered exactly like
a patient that does not exist (422 "unknown patient"), so that sending reveals nothing
about records the sender may not see. The rules also stamp what the server owns: ``status``,
``sent``, the WebMail category and the thread links of a reply.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhirserver.core import ports
from fhirserver.core.errors import FhirError, Issue, business_rule, forbidden
from fhirserver.core.hooks import WriteContext
from fhirserver.core.instants import instant
from fhirserver.webmail import profile
from fhirserver.webmail.profile import refs, split_ref


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _check_content(data: dict[str, Any]) -> None:
    issues = []
    if not _text((data.get("topic") or {}).get("text")):
        issues.append(Issue("required", "A subject is required", ["Communication.topic.text"]))
    bodies = [_text(p.get("contentString")) for p in data.get("payload") or [] if isinstance(p, dict)]
    if not any(bodies):
        issues.append(Issue("required", "A message body is required", ["Communication.payload.contentString"]))
    if issues:
        raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)


def _sender(ctx: WriteContext) -> str:
    senders = refs(ctx.data, "sender")
    p = ctx.principal
    if len(senders) != 1:
        raise business_rule("A message needs exactly one sender", ["Communication.sender"])
    sender = senders[0]
    if p.is_system:
        return sender
    if p.role == "staff":
        raise forbidden("Only providers and patients may send messages")
    if sender != p.fhir_user:
        raise forbidden("The sender must be the signed-in user")
    return sender


UNKNOWN_PATIENT = "The message refers to an unknown patient"


def _patient(ctx: WriteContext, ref: str, expression: str) -> dict[str, Any]:
    rtype, rid = split_ref(ref)
    patient = ctx.read_any(rtype, rid) if rtype == "Patient" and rid else None
    if patient is None:
        raise business_rule(UNKNOWN_PATIENT, [expression])
    return patient


def _from_patient(ctx: WriteContext, sender: str, recipients: list[str]) -> None:
    subjects = refs(ctx.data, "subject")
    if subjects and subjects != [sender]:
        raise forbidden("A patient writes only about themselves")
    ctx.data["subject"] = {"reference": sender}
    me = _patient(ctx, sender, "Communication.sender")
    primary = set(refs(me, "generalPractitioner"))
    for r in recipients:
        if r not in primary:
            raise business_rule("A patient may write only to their primary provider(s)", ["Communication.recipient"])


def _from_practitioner(ctx: WriteContext, sender: str, recipients: list[str]) -> None:
    patients = [r for r in recipients if r.startswith("Patient/")]
    others = [r for r in recipients if not r.startswith(("Patient/", "Practitioner/"))]
    if others:
        raise business_rule("Messages go to Patients or Practitioners", ["Communication.recipient"])
    subjects = refs(ctx.data, "subject")
    if len(set(patients)) > 1:
        raise business_rule("A message goes to one patient at a time", ["Communication.recipient"])
    if patients:
        if subjects and subjects != patients:
            raise forbidden("The subject must be the patient the message is sent to")
        ctx.data["subject"] = {"reference": patients[0]}
        subjects = patients
    for ref in subjects:
        patient = _patient(ctx, ref, "Communication.subject")
        if not ctx.principal.is_system and sender not in refs(patient, "generalPractitioner"):
            # Not this provider's patient: the same answer as a patient that does not exist.
            raise business_rule(UNKNOWN_PATIENT, ["Communication.subject"])
    for ref in patients:
        _check_reachable(ctx, ref)
    for ref in recipients:
        if ref.startswith("Practitioner/") and ctx.read_any(*split_ref(ref)) is None:
            raise business_rule("The message is addressed to an unknown practitioner", ["Communication.recipient"])


def _check_reachable(ctx: WriteContext, ref: str) -> None:
    """A provider writes to a patient only if the patient has an email and portal access."""
    patient = _patient(ctx, ref, "Communication.recipient")
    missing = []
    if not profile.telecom(patient, "email"):
        missing.append(
            Issue("business-rule", "The patient has no email address", ["Patient.telecom.where(system='email')"])
        )
    if ports.portal_accounts().portal_state(ctx.session, split_ref(ref)[1]) != ports.PORTAL_ACTIVE:
        missing.append(Issue("business-rule", "The patient has no portal access", ["Patient"]))
    if missing:
        raise FhirError(422, "business-rule", missing[0].diagnostics, issues=missing)


def _thread(ctx: WriteContext) -> None:
    """A reply points at the original (inResponseTo) and the thread's first message (partOf)."""
    replies = refs(ctx.data, "inResponseTo")
    if not replies:
        ctx.data.pop("partOf", None)
        return
    if len(replies) != 1 or not replies[0].startswith("Communication/"):
        raise business_rule("inResponseTo must name one message", ["Communication.inResponseTo"])
    from fhirserver.core.access import can_see

    orig_id = split_ref(replies[0])[1]
    original = ctx.read_any("Communication", orig_id)
    if original is None or not can_see(ctx.session, ctx.principal, "Communication", orig_id):
        raise business_rule("inResponseTo refers to an unknown message", ["Communication.inResponseTo"])
    root = refs(original, "partOf") or [replies[0]]
    ctx.data["partOf"] = [{"reference": root[0]}]


def before_communication(ctx: WriteContext) -> None:
    if ctx.old is not None:
        raise FhirError(405, "not-supported", "A sent message cannot be changed")
    data = ctx.data
    _check_content(data)
    sender = _sender(ctx)
    recipients = refs(data, "recipient")
    if not recipients:
        raise business_rule("A message needs a recipient", ["Communication.recipient"])
    if sender.startswith("Patient/"):
        _from_patient(ctx, sender, recipients)
    elif sender.startswith("Practitioner/"):
        _from_practitioner(ctx, sender, recipients)
    else:
        raise business_rule("The sender must be a Patient or a Practitioner", ["Communication.sender"])
    _thread(ctx)
    data["status"] = "completed"
    data["sent"] = instant(datetime.now(UTC))
    data.pop("received", None)
    if not profile.has_category(data):
        data["category"] = [*(data.get("category") or []), profile.CATEGORY]


def before_patient(ctx: WriteContext) -> None:
    """A provider-contact record needs full demographics and the sender as primary provider."""
    if not profile.is_provider_contact(ctx.data):
        return
    issues = [
        Issue("required", f"A provider contact needs a {label}", [path])
        for label, path in profile.missing_demographics(ctx.data)
    ]
    me = ctx.principal.fhir_user
    if not ctx.principal.is_system and (not me or me not in refs(ctx.data, "generalPractitioner")):
        issues.append(
            Issue("required", "The sending provider must be the primary provider", ["Patient.generalPractitioner"])
        )
    if issues:
        raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)

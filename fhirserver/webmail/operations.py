"""WebMail operations: $mark-read, $mark-unread, $unread-count, $grant-portal-access,
$reset-portal-password, and the read-state extension on Communication search results.

The core has already checked each operation's HTTP method and scope permission
(``fhirserver.rules`` declares them) before a handler here runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhirserver.core import access, audit, ports
from fhirserver.core.errors import FhirError, Issue, forbidden
from fhirserver.core.http import FhirResponse
from fhirserver.core.interactions import patient_ref_of
from fhirserver.webmail import outbox, profile, read_state
from notifier.email import PASSWORD_RESET_KIND

if TYPE_CHECKING:
    from fhirserver.core.router import Call

# Parameters of the HTTP layer (the response format), allowed on every interaction.
HTTP_PARAMS = frozenset({"_format", "_pretty"})


def _parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def _no_parameters(call: Call) -> None:
    """These operations take no parameters: anything sent is refused, not silently ignored."""
    sent = [k for k, _ in call.request.query if k not in HTTP_PARAMS]
    if sent or call.request.body.strip():
        raise FhirError(400, "invalid", f"{call.params['op']} takes no parameters")


def _reader(call: Call) -> tuple[str, str]:
    """The signed-in user and the identity their reading counts as for read receipts.

    Staff have no FHIR identity of their own: their read state is theirs alone (their unread
    count), and it never turns a message "Read" for its sender.
    """
    p = call.principal
    if not p.user_id:
        raise forbidden("Read state belongs to a signed-in user")
    return p.user_id, p.fhir_user or f"urn:fhirserver:user:{p.user_id}"


def _set_read(call: Call, read: bool) -> FhirResponse:
    _no_parameters(call)
    stored = call.repo.read("Communication", call.params["id"])
    call.res_id = stored.res_id
    call.patient_ref = patient_ref_of("Communication", stored.res_id, stored.json())
    user_id, reader = _reader(call)
    if read:
        read_state.mark_read(call.session, stored.res_id, user_id, reader)
    else:
        read_state.mark_unread(call.session, stored.res_id, user_id)
    return FhirResponse.json(200, _parameters({"name": "read", "valueBoolean": read}))


def mark_read(call: Call) -> FhirResponse:
    return _set_read(call, True)


def mark_unread(call: Call) -> FhirResponse:
    return _set_read(call, False)


def unread_count(call: Call) -> FhirResponse:
    _no_parameters(call)
    p = call.principal
    if not p.user_id:
        raise forbidden("The unread count belongs to a signed-in user")
    recipients = [p.fhir_user] if p.fhir_user else list(p.staff_of)
    grant = access.scope_conditions(p, "Communication", "r")
    count = read_state.unread_count(call.session, p.user_id, [r for r in recipients if r], grant)
    return FhirResponse.json(200, _parameters({"name": "count", "valueInteger": count}))


def read_state_extensions(call: Call, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    receipts = read_state.read_receipts(call.session, call.principal.user_id, ids)
    return {
        i: [
            {
                "url": profile.READ_STATE_URL,
                "extension": [
                    {"url": "readByMe", "valueBoolean": mine},
                    {"url": "readByRecipient", "valueBoolean": theirs},
                ],
            }
        ]
        for i, (mine, theirs) in receipts.items()
    }


PORTAL_ROLES = ("provider", "system")  # staff may not: docs/security.md, "Staff"


def _portal_patient(call: Call) -> dict[str, Any]:
    """The Patient of a portal-access operation: providers (and the server) only, inside the grant."""
    p = call.principal
    # Backend services hold system/ tokens but never receive a patient's one-time password:
    # only providers, and the server itself (seed, CLI), hand out portal credentials.
    if p.role not in PORTAL_ROLES or (p.is_system and not p.is_server):
        raise forbidden("Only providers grant or reset portal access")
    stored = call.repo.read("Patient", call.params["id"])
    call.patient_ref = f"Patient/{stored.res_id}"
    return stored.json()


def _credentials(call: Call, creds: ports.PortalCredentials) -> FhirResponse:
    return FhirResponse.json(
        200,
        _parameters(
            {"name": "username", "valueString": creds.username},
            {"name": "password", "valueString": creds.password},
            {"name": "portalUrl", "valueUrl": f"{call.settings.base_url}/portal/"},
        ),
    )


STATE_CONFLICT = {
    ports.PORTAL_ACTIVE: "The patient already has an active portal account; use $reset-portal-password to "
    "issue a new one-time password",
    ports.PORTAL_DISABLED: "The patient's portal account is disabled; an administrator must enable it first",
    ports.PORTAL_NONE: "The patient has no portal account; use $grant-portal-access first",
}


def _conflict(exc: ports.PortalStateError) -> FhirError:
    err = FhirError(409, "conflict", STATE_CONFLICT.get(exc.state, "The portal account cannot change now"))
    err.issues[0].expression = None
    return err


def grant_portal_access(call: Call) -> FhirResponse:
    """Create the patient's portal account (state none -> active); the one-time password is shown once.

    A patient who already has an account (active or disabled) gets 409 naming its state:
    granting again must never replace a password the patient chose.
    """
    _no_parameters(call)
    patient = _portal_patient(call)
    missing = profile.missing_demographics(patient)
    if missing:
        issues = [Issue("required", f"Portal access needs the patient's {label}", [path]) for label, path in missing]
        raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)
    try:
        creds = ports.portal_accounts().grant_portal_access(
            call.session, call.settings, patient_id=patient["id"], first_name=profile.first_name(patient)
        )
    except ports.PortalStateError as exc:
        raise _conflict(exc) from None
    audit.security_event(
        call.session,
        subtype="portal-access-granted",
        outcome="0",
        principal=call.principal,
        description="portal access granted",
        patient_ref=call.patient_ref,
    )
    return _credentials(call, creds)


def reset_portal_password(call: Call) -> FhirResponse:
    """A new one-time password for an active portal account (the console asks to confirm first).

    The patient's sessions and tokens end at once, and the patient is emailed that the
    password was reset (no PHI: the office's name and the portal link).
    """
    _no_parameters(call)
    patient = _portal_patient(call)
    try:
        creds = ports.portal_accounts().reset_portal_password(call.session, call.settings, patient_id=patient["id"])
    except ports.PortalStateError as exc:
        raise _conflict(exc) from None
    event_id = audit.security_event(
        call.session,
        subtype="portal-password-reset",
        outcome="0",
        principal=call.principal,
        description="portal password reset",
        patient_ref=call.patient_ref,
    )
    outbox.queue_notice(
        call.session,
        call.settings,
        kind=PASSWORD_RESET_KIND,
        subject_id=event_id,
        recipient_ref=f"Patient/{patient['id']}",
    )
    return _credentials(call, creds)

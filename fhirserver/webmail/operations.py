"""WebMail operations: $mark-read, $mark-unread, $unread-count, $grant-portal-access,
and the read-state extension on Communication search results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhirserver.core import access, audit
from fhirserver.core.errors import FhirError, Issue, forbidden
from fhirserver.core.http import FhirResponse
from fhirserver.core.interactions import patient_ref_of
from fhirserver.webmail import profile, read_state

if TYPE_CHECKING:
    from fhirserver.core.router import Call

# Parameters of the HTTP layer (the response format), allowed on every interaction.
HTTP_PARAMS = frozenset({"_format", "_pretty"})


def _parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def _require_post(call: Call) -> None:
    if call.request.method != "POST":
        raise FhirError(405, "not-supported", f"{call.params['op']} changes state: use POST")


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
    _require_post(call)
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
    access.check_interaction(p, "Communication", "s")
    if not p.user_id:
        raise forbidden("The unread count belongs to a signed-in user")
    recipients = [p.fhir_user] if p.fhir_user else list(p.staff_of)
    count = read_state.unread_count(call.session, p.user_id, [r for r in recipients if r])
    return FhirResponse.json(200, _parameters({"name": "count", "valueInteger": count}))


def read_state_extensions(call: Call, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    receipts = read_state.read_receipts(call.session, call.principal.user_id, ids)
    return {
        i: [{
            "url": profile.READ_STATE_URL,
            "extension": [
                {"url": "readByMe", "valueBoolean": mine},
                {"url": "readByRecipient", "valueBoolean": theirs},
            ],
        }]
        for i, (mine, theirs) in receipts.items()
    }


def grant_portal_access(call: Call) -> FhirResponse:
    """Create (or reset) the patient's portal account; the one-time password is shown once."""
    from smart_auth.accounts import grant_portal_access as grant

    _require_post(call)
    _no_parameters(call)
    p = call.principal
    if p.role not in ("provider", "staff", "system"):
        raise forbidden("Only providers and staff grant portal access")
    access.check_interaction(p, "Patient", "u")
    stored = call.repo.read("Patient", call.params["id"])
    call.patient_ref = f"Patient/{stored.res_id}"
    patient = stored.json()
    missing = profile.missing_demographics(patient)
    if missing:
        issues = [Issue("required", f"Portal access needs the patient's {label}", [path])
                  for label, path in missing]
        raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)
    username, password = grant(call.session, call.settings, patient_id=stored.res_id,
                               first_name=profile.first_name(patient))
    audit.security_event(call.session, subtype="portal-access-granted", outcome="0", principal=p,
                         description="portal access granted")
    return FhirResponse.json(200, _parameters(
        {"name": "username", "valueString": username},
        {"name": "password", "valueString": password},
        {"name": "portalUrl", "valueUrl": f"{call.settings.base_url}/portal/"},
    ))

"""Break-glass: a provider's emergency access to a patient outside their care (``Patient/$break-glass``).

``POST /fhir/Patient/$break-glass`` with a Parameters body (never query parameters, so the
reason and the identifier stay out of URLs and logs):

- ``identifier`` (``valueIdentifier`` or ``valueString`` "system|value"), the exact
  identifier, system included;
- ``birthdate`` (``valueDate`` or ``valueString``, YYYY-MM-DD), the exact birth date;
- ``reason`` (``valueString``, 10-500 characters), why; it may hold PHI, so it is stored
  encrypted and appears in no audit record, email or log.

Both must match the same Patient in the search index, exactly (identifier system and
value case-sensitive, birth date to the day). A wrong birth date and an unknown
identifier give the same answer, ``match=false``, so the operation tells nothing about
which part was wrong. On a match outside the provider's care a ``break_glass_grant`` row
opens the patient's compartment to this user for reading for ``BREAK_GLASS_MINUTES``
(``fhirserver.core.access``); the answer carries the Patient and ``expires``. A patient
already in their care is returned with ``inCare=true`` and no grant.

Who: providers only (not staff, patients, administrators, auditors or the server), with a
token that reads Patients at user level (``user/Patient.r``: the operation's declared
permission is ``r`` on Patient, and a ``patient/``-scoped token is confined to its launch
patient). Each attempt, found or not, is counted (``break_glass_attempt``): more than
``MAX_ATTEMPTS`` in ``ATTEMPT_WINDOW`` is 429. Each is audited with purposeOfUse ETREAT
(a security AuditEvent besides the router's REST one); every later read or search
through the grant is too (``access.audit_purpose``). A grant alerts the practice's
administrators (``SECURITY_ALERT_EMAILS``) and the patient's primary providers by email,
through the outbox in the same transaction, with no PHI: the email only says that a
break-glass access was recorded and links to the console.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, validate, validates_schema
from marshmallow import fields as mf
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core import audit
from fhirserver.core.crypto import KeyRing
from fhirserver.core.errors import FhirError, forbidden
from fhirserver.core.http import FhirResponse
from fhirserver.models import BreakGlassAttempt, BreakGlassGrant, IdxDate, IdxReference, IdxToken, ResourceRow
from fhirserver.webmail.outbox import queue_notice
from notifier.email import BREAK_GLASS_KIND, alert_recipient_ref, is_valid_address

if TYPE_CHECKING:
    from fhirserver.core.router import Call

OPERATION = "$break-glass"
EMERGENCY = "ETREAT"  # v3-ActReason: emergency treatment
MAX_ATTEMPTS = 10
ATTEMPT_WINDOW = timedelta(hours=1)
# A closed grant stays this long for the review (it holds the encrypted reason), then goes.
REVIEW_DAYS = 30
REASON_MIN, REASON_MAX = 10, 500
# The envelope of a reason is bound to its grant (associated data, as for resources).
REASON_AAD_TYPE = "BreakGlassGrant"
HTTP_PARAMS = frozenset({"_format", "_pretty"})
DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


@dataclass(frozen=True)
class BreakGlassRequest:
    identifier_system: str
    identifier_value: str
    birthdate: date
    reason: str


# -- parameters ----------------------------------------------------------------------------------


class _IdentifierSchema(Schema):
    class Meta:
        unknown = RAISE

    system = mf.String(required=True, validate=validate.Length(min=1, max=255))
    value = mf.String(required=True, validate=validate.Length(min=1, max=255))
    use = mf.String()
    type = mf.Dict()


class _ParameterSchema(Schema):
    class Meta:
        unknown = RAISE

    name = mf.String(required=True, validate=validate.OneOf(["identifier", "birthdate", "reason"]))
    valueString = mf.String(validate=validate.Length(min=1, max=2000))
    valueDate = mf.String(validate=validate.Length(min=1, max=40))
    valueIdentifier = mf.Nested(_IdentifierSchema)

    @validates_schema
    def _one_value(self, data: dict[str, Any], **_: Any) -> None:
        if sum(k.startswith("value") for k in data) != 1:
            raise ValidationError("exactly one value[x]")


class _ParametersSchema(Schema):
    """The FHIR Parameters body: three named parameters, each once, nothing else."""

    class Meta:
        unknown = RAISE

    resourceType = mf.String(required=True, validate=validate.Equal("Parameters"))
    id = mf.String()
    parameter = mf.List(mf.Nested(_ParameterSchema), required=True, validate=validate.Length(min=1, max=3))


class _RequestSchema(Schema):
    """The values, once taken out of the Parameters: what a valid break-glass request is."""

    identifier_system = mf.String(required=True, validate=validate.Length(min=1, max=255))
    identifier_value = mf.String(required=True, validate=validate.Length(min=1, max=255))
    birthdate = mf.String(required=True, validate=validate.Regexp(DATE_RE))
    reason = mf.String(required=True, validate=validate.Length(min=REASON_MIN, max=REASON_MAX))


# Fixed texts per parameter: an error never echoes what was sent (it may be PHI).
PARAMETER_HELP = {
    "identifier": "identifier: give the exact identifier as valueIdentifier (system and value) or 'system|value'",
    "birthdate": "birthdate: give the exact birth date as YYYY-MM-DD",
    "reason": f"reason: say why, in {REASON_MIN} to {REASON_MAX} characters",
}


def _bad(name: str | None = None) -> FhirError:
    text = PARAMETER_HELP.get(name or "", "The body must be a Parameters resource with identifier, birthdate, reason")
    return FhirError(400, "invalid", text)


def parse_request(body: bytes) -> BreakGlassRequest:
    """The validated request, or 400 naming the parameter at fault (never its value)."""
    from fhirserver.core.validation import parse_json

    if not body.strip():
        raise _bad()
    data = parse_json(body)
    try:
        loaded = _ParametersSchema().load(data)
    except ValidationError as exc:
        raise _bad(_failed_parameter(data, exc.messages)) from None
    values: dict[str, Any] = {}
    for param in loaded["parameter"]:
        name = param["name"]
        if name in values:
            raise _bad(name)
        values[name] = param
    if set(values) != set(PARAMETER_HELP):
        raise _bad(next((n for n in PARAMETER_HELP if n not in values), None))
    system, value = _identifier(values["identifier"])
    raw = {
        "identifier_system": system,
        "identifier_value": value,
        "birthdate": values["birthdate"].get("valueDate") or values["birthdate"].get("valueString"),
        "reason": (values["reason"].get("valueString") or "").strip(),
    }
    try:
        checked = _RequestSchema().load(raw)
        born = date.fromisoformat(checked["birthdate"])
    except ValidationError as exc:
        field = next(iter(exc.messages), "") if isinstance(exc.messages, dict) else ""
        raise _bad("identifier" if str(field).startswith("identifier") else str(field)) from None
    except ValueError:
        raise _bad("birthdate") from None
    if born > datetime.now(UTC).date():
        raise _bad("birthdate")
    return BreakGlassRequest(checked["identifier_system"], checked["identifier_value"], born, checked["reason"])


def _failed_parameter(data: dict[str, Any], messages: Any) -> str | None:
    """Which named parameter the schema refused, if it can be told (for the error text)."""
    errors = messages.get("parameter") if isinstance(messages, dict) else None
    params = data.get("parameter")
    if isinstance(errors, dict) and isinstance(params, list):
        for index in errors:
            if isinstance(index, int) and index < len(params) and isinstance(params[index], dict):
                name = params[index].get("name")
                if name in PARAMETER_HELP:
                    return str(name)
    return None


def _identifier(param: dict[str, Any]) -> tuple[str, str]:
    if "valueIdentifier" in param:
        return param["valueIdentifier"]["system"], param["valueIdentifier"]["value"]
    text = param.get("valueString") or ""
    system, sep, value = text.partition("|")
    if not sep or not system or not value or "|" in value:
        raise _bad("identifier")
    return system, value


# -- lookup, throttle, grant ---------------------------------------------------------------------


def find_patients(session: Session, req: BreakGlassRequest) -> list[str]:
    """Ids of the live Patients with exactly this identifier (system and value) and birth date.

    The birth date must lie within the given day: a stored year or month alone does not
    match a full date, and no prefix, modifier or partial value exists here.
    """
    low = datetime(req.birthdate.year, req.birthdate.month, req.birthdate.day, tzinfo=UTC)
    high = low + timedelta(days=1) - timedelta(microseconds=1)
    by_identifier = select(IdxToken.res_id).where(
        IdxToken.res_type == "Patient",
        IdxToken.param == "identifier",
        IdxToken.system == req.identifier_system[:255],
        IdxToken.code == req.identifier_value[:255],
    )
    by_birthdate = select(IdxDate.res_id).where(
        IdxDate.res_type == "Patient",
        IdxDate.param == "birthdate",
        IdxDate.low >= low,
        IdxDate.high <= high,
    )
    stmt = (
        select(ResourceRow.res_id)
        .where(
            ResourceRow.res_type == "Patient",
            ResourceRow.deleted.is_(False),
            ResourceRow.res_id.in_(by_identifier),
            ResourceRow.res_id.in_(by_birthdate),
        )
        .limit(2)
    )
    return list(session.execute(stmt).scalars())


def _in_care(session: Session, practitioner_id: str, patient_id: str) -> bool:
    stmt = select(IdxReference.pk).where(
        IdxReference.res_type == "Patient",
        IdxReference.res_id == patient_id,
        IdxReference.param == "general-practitioner",
        IdxReference.target_type == "Practitioner",
        IdxReference.target_id == practitioner_id,
    )
    return session.execute(stmt.limit(1)).first() is not None


def check_throttle(session: Session, user_id: str, now: datetime) -> None:
    """429 once a user has made MAX_ATTEMPTS break-glass searches within ATTEMPT_WINDOW."""
    count = session.execute(
        select(func.count(BreakGlassAttempt.id)).where(
            BreakGlassAttempt.user_id == user_id, BreakGlassAttempt.attempted_at > now - ATTEMPT_WINDOW
        )
    ).scalar_one()
    if count >= MAX_ATTEMPTS:
        exc = FhirError(429, "throttled", "Too many break-glass searches; try again later or call the office")
        exc.headers["Retry-After"] = str(int(ATTEMPT_WINDOW.total_seconds()))
        raise exc


def create_grant(
    session: Session,
    settings: Settings,
    *,
    user_id: str,
    practitioner_ref: str,
    patient_id: str,
    reason: str,
    now: datetime | None = None,
) -> BreakGlassGrant:
    """Insert a grant (reason encrypted, bound to the grant id) in the caller's transaction."""
    now = now or datetime.now(UTC)
    gid = uuid.uuid4().hex
    envelope, key_id = KeyRing(settings.encryption_keys, settings.active_key_id).encrypt(
        reason.encode("utf-8"), REASON_AAD_TYPE, gid, 1
    )
    grant = BreakGlassGrant(
        id=gid,
        user_id=user_id,
        practitioner_ref=practitioner_ref,
        patient_id=patient_id,
        reason=envelope,
        key_id=key_id,
        created_at=now,
        expires_at=now + timedelta(minutes=settings.break_glass_minutes),
    )
    session.add(grant)
    session.flush()
    return grant


def reason_of(settings: Settings, grant: BreakGlassGrant) -> str:
    """The decrypted reason, for the review (never logged, emailed or audited)."""
    keys = KeyRing(settings.encryption_keys, settings.active_key_id)
    return keys.decrypt(grant.reason, grant.key_id, REASON_AAD_TYPE, grant.id, 1).decode("utf-8")


def revoke(session: Session, grant_id: str, now: datetime | None = None) -> bool:
    """End a grant now; the compartment closes at the next request. The caller commits."""
    grant = session.get(BreakGlassGrant, grant_id)
    if grant is None or grant.revoked_at is not None:
        return False
    grant.revoked_at = now or datetime.now(UTC)
    return True


def purge(session: Session, now: datetime | None = None) -> dict[str, int]:
    """Delete grants closed more than REVIEW_DAYS ago and attempts the throttle no longer counts."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=REVIEW_DAYS)
    grants = session.execute(
        delete(BreakGlassGrant).where(or_(BreakGlassGrant.expires_at < cutoff, BreakGlassGrant.revoked_at < cutoff))
    )
    attempts = session.execute(delete(BreakGlassAttempt).where(BreakGlassAttempt.attempted_at < now - ATTEMPT_WINDOW))
    return {"break_glass_grants": grants.rowcount or 0, "break_glass_attempts": attempts.rowcount or 0}  # type: ignore[attr-defined]


def alert_recipients(settings: Settings, patient: dict[str, Any]) -> list[str]:
    """Outbox recipients of a grant's alert: the alert addresses, then the primary providers."""
    refs = [alert_recipient_ref(a) for a in settings.security_alert_emails if is_valid_address(a.strip())]
    for gp in patient.get("generalPractitioner") or []:
        ref = gp.get("reference") if isinstance(gp, dict) else None
        if isinstance(ref, str) and ref.startswith("Practitioner/"):
            refs.append(ref)
    return list(dict.fromkeys(refs))


# -- the operation -------------------------------------------------------------------------------


def _parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def _requester(call: Call) -> tuple[str, str]:
    """(user id, practitioner id) of a provider allowed to break the glass, or 403."""
    p = call.principal
    if p.role != "provider" or not p.user_id:
        raise forbidden("Only providers may use break-glass access")
    kind, _, prac_id = (p.fhir_user or "").partition("/")
    if kind != "Practitioner" or not prac_id:
        raise forbidden("Break-glass access needs an account linked to a provider")
    if "user" not in p.scopes.contexts_for("Patient", "r"):
        raise forbidden("Break-glass access needs a user-level scope that reads Patients (user/Patient.r)")
    return p.user_id, prac_id


def break_glass(call: Call) -> FhirResponse:
    """Find the patient; on a match outside the provider's care, open a grant and alert."""
    # Every attempt, refused or not, is recorded as emergency treatment.
    call.principal = replace(call.principal, purpose_of_use=EMERGENCY)
    user_id, prac_id = _requester(call)
    if any(k not in HTTP_PARAMS for k, _ in call.request.query):
        raise FhirError(400, "invalid", "Break-glass parameters go in the request body, never in the URL")
    req = parse_request(call.request.body)
    session, now = call.session, datetime.now(UTC)
    check_throttle(session, user_id, now)
    found = find_patients(session, req)
    if len(found) > 1:
        raise FhirError(409, "multiple-matches", "More than one patient record matches; call the records office")
    session.add(BreakGlassAttempt(user_id=user_id, attempted_at=now, matched=bool(found)))
    if not found:
        session.flush()
        audit.security_event(
            session, subtype="break-glass", outcome="4", principal=call.principal, description="no patient matched"
        )
        return FhirResponse.json(200, _parameters({"name": "match", "valueBoolean": False}))
    pid = found[0]
    call.patient_ref = f"Patient/{pid}"
    if _in_care(session, prac_id, pid):
        patient = call.repo.read("Patient", pid).json()
        return FhirResponse.json(
            200,
            _parameters(
                {"name": "match", "valueBoolean": True},
                {"name": "inCare", "valueBoolean": True},
                {"name": "patient", "resource": patient},
            ),
        )
    grant = create_grant(
        session,
        call.settings,
        user_id=user_id,
        practitioner_ref=f"Practitioner/{prac_id}",
        patient_id=pid,
        reason=req.reason,
        now=now,
    )
    # Read through the grant, as every later request will be (access.py consults it). The
    # token check looked up the live grants before this one existed: ask the database again.
    call.principal = call.repo.principal = replace(call.principal, break_glass=None)
    patient = call.repo.read("Patient", pid).json()
    event_id = audit.security_event(
        session,
        subtype="break-glass",
        outcome="0",
        principal=call.principal,
        description="break-glass access to a patient outside the user's care",
        patient_ref=call.patient_ref,
    )
    for ref in alert_recipients(call.settings, patient):
        queue_notice(session, call.settings, kind=BREAK_GLASS_KIND, subject_id=event_id, recipient_ref=ref)
    expires = grant.expires_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return FhirResponse.json(
        200,
        _parameters(
            {"name": "match", "valueBoolean": True},
            {"name": "inCare", "valueBoolean": False},
            {"name": "expires", "valueInstant": expires},
            {"name": "patient", "resource": patient},
        ),
    )


__all__ = [
    "OPERATION",
    "BreakGlassRequest",
    "break_glass",
    "create_grant",
    "find_patients",
    "parse_request",
    "purge",
    "reason_of",
    "revoke",
]

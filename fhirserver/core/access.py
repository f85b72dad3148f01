"""Every authorization decision of the FHIR API, in one module, run before any query.

Three questions, answered from the Principal alone (plus the index tables):

1. May this principal perform this interaction on this type at all? (scopes and role)
   No -> 403 ``forbidden``.
2. Which rows of this type may it see? A list of SQL conditions on ``resource``
   that every read, search, history and count ANDs into its query. A resource
   outside them is answered 404, exactly as if it did not exist.
3. May it write this content? The resource as it will be stored must lie inside what
   the principal could read afterwards (so nobody creates records they then cannot
   see, or moves a record out of someone's reach and into their own).

The rules:
- patients: their own Patient (read only), and the Communications whose subject, sender or
  recipient is their Patient (the R4 patient compartment for Communication);
- providers: the Patients whose generalPractitioner is them, all the Communications
  about those patients, and every Communication they sent or received; and, for reading
  and searching only, a patient outside their care while they hold a live break-glass
  grant on them (``fhirserver.break_glass``) with that patient's Communications;
- staff (medical assistants): what the providers they work for see; they register and
  update those providers' patients' demographics, but never delete a record, send WebMail
  or grant or reset portal access (the WebMail rules and operations refuse the last two);
- auditors: AuditEvents only; admins: no PHI (directory resources only);
- everyone signed in may read the directory (Practitioner, Organization): names of
  the practice's providers are not PHI and patients need them to address mail;
- ``patient/`` scopes further confine a principal to the compartment of the patient
  in launch context;
- SMART 2 granular scopes (``?category=system|code``) confine a scope to the resources its
  filter matches (``fhirserver.core.scope_filters``), for reads, searches and writes alike;
  the scopes on one type and permission combine as a union.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, false, or_, select

from fhirserver.core import scope_filters
from fhirserver.core.errors import FhirError, forbidden
from fhirserver.core.principal import Principal
from fhirserver.core.resource_types import Policy, descriptor, of_policy
from fhirserver.models import BreakGlassGrant, IdxReference, ResourceRow

# Each served type's policy comes from its descriptor (fhirserver.core.resource_types).
PHI_TYPES = of_policy(Policy.COMPARTMENT)
DIRECTORY_TYPES = of_policy(Policy.DIRECTORY)
AUDIT_TYPES = of_policy(Policy.AUDIT)
SYSTEM_ONLY_TYPES = of_policy(Policy.SYSTEM_ONLY)
USER_TYPES = PHI_TYPES | DIRECTORY_TYPES | AUDIT_TYPES  # the policies that let users in at all
# Interactions on AuditEvent other than reading are never allowed through the API.
READ_PERMS = frozenset({"r", "s"})


def _split(ref: str | None) -> tuple[str, str] | None:
    if not ref or "/" not in ref:
        return None
    t, i = ref.split("/", 1)
    return t, i


def check_interaction(p: Principal, res_type: str, perm: str) -> None:
    """Raise 403 (or 405 for AuditEvent writes) unless role and scopes allow ``perm`` on ``res_type``."""
    if res_type in AUDIT_TYPES and perm not in READ_PERMS:
        raise FhirError(405, "not-supported", "AuditEvents are written by the server only")
    if p.is_system:
        # A backend service (or the server itself, system/*.cruds) may do exactly what its
        # system/ scopes name, on every record of those types.
        if "system" not in p.scopes.contexts_for(res_type, perm):
            raise forbidden(f"The access token does not grant this interaction on {res_type}")
        return
    if res_type in AUDIT_TYPES and p.role != "auditor":
        raise forbidden("Only auditors may read AuditEvents")
    if p.role == "auditor" and res_type not in AUDIT_TYPES:
        raise forbidden("Auditors may read AuditEvents only")
    if res_type not in USER_TYPES:  # system-only, or a type without a policy
        raise forbidden(f"{res_type} is for system clients only")
    if p.role == "admin" and res_type in PHI_TYPES:
        raise forbidden("Administrators have no access to patient data")
    if res_type in DIRECTORY_TYPES and perm not in READ_PERMS and p.role != "admin":
        raise forbidden("Only administrators maintain the directory")
    if p.role == "staff" and perm == "d":
        raise forbidden("Staff cannot delete records")
    if p.role == "patient" and res_type == "Patient" and perm in ("c", "u", "d"):
        # Not even their own: generalPractitioner decides who may write to them and which
        # providers see them, so a patient who could edit it could message any provider.
        raise forbidden("Patients cannot create, change or delete patient records")
    contexts = p.scopes.contexts_for(res_type, perm)
    if not contexts:
        raise forbidden(f"The access token does not grant this interaction on {res_type}")
    if contexts == {"patient"} and not _patient_context(p):
        raise forbidden("patient/ scopes need a patient in context")


def _patient_context(p: Principal) -> str | None:
    if p.patient:
        return p.patient
    if p.role == "patient":
        ref = _split(p.fhir_user)
        return ref[1] if ref and ref[0] == "Patient" else None
    return None


def _ref_exists(res_type: str, params: tuple[str, ...], target_type: str, target_ids: Any) -> ColumnElement[bool]:
    """Rows of ``res_type`` that point at one of the targets through one of ``params``."""
    cond = [
        IdxReference.res_type == res_type,
        IdxReference.res_id == ResourceRow.res_id,
        IdxReference.param.in_(params) if len(params) > 1 else IdxReference.param == params[0],
        IdxReference.target_type == target_type,
    ]
    if isinstance(target_ids, str):
        cond.append(IdxReference.target_id == target_ids)
    else:
        cond.append(IdxReference.target_id.in_(target_ids))
    return exists(select(IdxReference.pk).where(*cond))


def _patients_of(practitioner_ids: list[str]) -> Any:
    """A subquery of the ids of the Patients whose primary provider is one of these practitioners."""
    return select(IdxReference.res_id).where(
        IdxReference.res_type == "Patient",
        IdxReference.param == "general-practitioner",
        IdxReference.target_type == "Practitioner",
        IdxReference.target_id.in_(practitioner_ids),
    )


def _care_practitioners(p: Principal) -> list[str]:
    if p.role == "provider":
        ref = _split(p.fhir_user)
        return [ref[1]] if ref and ref[0] == "Practitioner" else []
    if p.role == "staff":
        return [r[1] for r in map(_split, p.staff_of) if r and r[0] == "Practitioner"]
    return []


def _now() -> datetime:
    return datetime.now(UTC)


def break_glass_patients(user_id: str) -> Any:
    """A subquery of the ids of the Patients a live break-glass grant of ``user_id`` opens.

    Live: not revoked and not yet expired, by the server's clock at the time of the
    query (the bound value is taken when each statement runs, so a cached statement is
    never stale): an expired or revoked grant closes the compartment at the next request.
    """
    return select(BreakGlassGrant.patient_id).where(
        BreakGlassGrant.user_id == user_id,
        BreakGlassGrant.expires_at
        > bindparam("glass_now", callable_=_now, type_=BreakGlassGrant.expires_at.type, unique=True),
        BreakGlassGrant.revoked_at.is_(None),
    )


def _glass_patients(p: Principal) -> Any:
    """The patients ``p``'s live break-glass grants open: as the token check found them (a
    list, often empty), or else a subquery evaluated with the query."""
    return list(p.break_glass) if p.break_glass is not None else break_glass_patients(p.user_id or "")


def _compartment_refs(res_type: str) -> tuple[str, ...]:
    """The reference parameters that place a ``res_type`` resource in a patient's compartment
    (not for Patient itself, whose compartment is its own id)."""
    return descriptor(res_type).compartment_params


def _role_conditions(p: Principal, res_type: str, perm: str = "r") -> list[ColumnElement[bool]]:
    policy = descriptor(res_type).policy
    if p.is_system or policy in (Policy.DIRECTORY, Policy.AUDIT):
        return []
    if policy is not Policy.COMPARTMENT:
        return [false()]  # closed: check_interaction refuses users on other types already
    if p.role == "patient":
        pid = _patient_context(p)
        return _patient_compartment(res_type, pid) if pid else [false()]
    pracs = _care_practitioners(p)
    if not pracs:
        return [false()]
    # Break-glass opens a patient's compartment to the provider for reading and searching
    # only: writes keep the normal rules (no becoming their primary provider, no delete).
    # Known to be none (the usual case): the conditions stay as simple as without break-glass.
    glass = p.role == "provider" and p.user_id is not None and perm in READ_PERMS and p.break_glass != ()
    if res_type == "Patient":
        # A correlated probe of this row's own general-practitioner index rows: an IN over
        # _patients_of would build the list of all the provider's patients on every read.
        mine = _ref_exists("Patient", ("general-practitioner",), "Practitioner", pracs)
        return [or_(mine, ResourceRow.res_id.in_(_glass_patients(p)))] if glass else [mine]
    # Every other compartment type: the compartments of the provider's patients (and, with
    # break-glass, of the patients it opens), plus what names the provider themselves.
    refs = _compartment_refs(res_type)
    if not refs:
        return [false()]
    own = descriptor(res_type).practitioner_params
    return [
        or_(
            *([_ref_exists(res_type, own, "Practitioner", pracs)] if own else []),
            _ref_exists(res_type, refs, "Patient", _patients_of(pracs)),
            *([_ref_exists(res_type, refs, "Patient", _glass_patients(p))] if glass else []),
        )
    ]


def audit_purpose(session: Any, p: Principal, patient_ref: str | None, res_type: str | None) -> str:
    """The purposeOfUse of one interaction for its AuditEvent: ETREAT when it went through break-glass.

    A provider's interaction about a patient outside their care while a break-glass grant on
    that patient is live is emergency treatment; so is a search on patient data while any
    of their grants is live (its results may include such a patient, and the AuditEvent of
    a search names no patient). Everything else keeps the principal's purpose.
    """
    if p.role != "provider" or not p.user_id or res_type not in PHI_TYPES:
        return p.purpose_of_use
    if p.pending is not None and p.pending.break_glass_live is False:  # the read's query found none
        return p.purpose_of_use
    if p.break_glass is not None:  # the token check looked them up already
        live = set(p.break_glass)
    else:
        live = set(session.execute(break_glass_patients(p.user_id)).scalars())
    if not live:
        return p.purpose_of_use
    ref = _split(patient_ref)
    if ref is None:
        return "ETREAT"
    if ref[0] != "Patient" or ref[1] not in live:
        return p.purpose_of_use
    in_care = session.execute(
        _patients_of(_care_practitioners(p)).where(IdxReference.res_id == ref[1]).limit(1)
    ).first()
    return p.purpose_of_use if in_care else "ETREAT"


def _patient_compartment(res_type: str, pid: str) -> list[ColumnElement[bool]]:
    """The rows of ``res_type`` in Patient ``pid``'s compartment; none for a type outside it.

    The Patient itself is its own compartment; R4 also places the Patients that
    ``link`` to it there, which this server does not: a patient reads only their own record.
    """
    if res_type == "Patient":
        return [ResourceRow.res_id == pid]
    refs = _compartment_refs(res_type)
    return [_ref_exists(res_type, refs, "Patient", pid)] if refs else [false()]


def _compartment_confines(p: Principal, res_type: str) -> bool:
    """Whether a ``patient/`` scope adds the patient compartment to the role's own rules.

    Patients' role rules are their compartment already; system principals have no patient.
    """
    return not p.is_system and p.role != "patient" and res_type in PHI_TYPES


def _scope_conditions(p: Principal, res_type: str, perm: str) -> list[ColumnElement[bool]]:
    """What the principal's scopes on this type and permission reach, as one condition.

    Scopes combine as a union: a row reached by any of them is reached. Each scope reaches
    the rows its granular filter matches (``?category=...``; unfiltered: all), inside the
    patient compartment for a ``patient/`` scope of a provider or staff token. One scope
    that reaches everything the role allows (an unfiltered ``user/`` or ``system/`` one, or
    a ``patient/`` one where the role rules are the compartment) needs no condition at all.
    Without a covering scope nothing is added: ``check_interaction`` has refused already.
    """
    confine = _compartment_confines(p, res_type)
    keys = dict.fromkeys((confine and s.context == "patient", s.filters) for s in p.scopes.covering(res_type, perm))
    if not keys or any(not compartment and not filters for compartment, filters in keys):
        return []
    pid = _patient_context(p)
    terms: list[ColumnElement[bool]] = []
    for compartment, filters in keys:
        parts: list[ColumnElement[bool]] = []
        if compartment:
            parts += _patient_compartment(res_type, pid) if pid else [false()]
        if filters:
            parts.append(scope_filters.condition(res_type, filters))
        if not parts:
            return []  # a type with no compartment yet: the role rules alone, as before
        terms.append(and_(*parts) if len(parts) > 1 else parts[0])
    return [terms[0] if len(terms) == 1 else or_(*terms)]


def scope_conditions(p: Principal, res_type: str, perm: str = "r") -> list[ColumnElement[bool]]:
    """Only what the scopes add (granular filters, a patient compartment), without the role rules.

    For queries already confined to the principal's own rows by construction (the unread count
    counts mail addressed to the user): empty for unfiltered scopes, so the hot path pays nothing.
    """
    return _scope_conditions(p, res_type, perm)


def principal_key(p: Principal) -> tuple[Any, ...]:
    """Everything of a Principal that the row conditions depend on (not the request's own
    fields: address, request id, token id, purpose): equal keys, equal conditions."""
    return (p.role, p.user_id, p.fhir_user, p.patient, p.staff_of, p.break_glass, p.scopes.raw)


class PrincipalShape:
    """A Principal as a cache key (:func:`principal_key`), carrying the Principal to build from."""

    __slots__ = ("key", "principal")

    def __init__(self, p: Principal) -> None:
        self.principal = p
        self.key = principal_key(p)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrincipalShape) and other.key == self.key


# Per process, per principal shape: a user's requests reuse their conditions (and the
# statements built from them) instead of building and re-keying them every time.
CONDITION_CACHE_SIZE = 4096


@lru_cache(maxsize=CONDITION_CACHE_SIZE)
def _cached_conditions(shape: PrincipalShape, res_type: str, perm: str) -> tuple[ColumnElement[bool], ...]:
    p = shape.principal
    return tuple(_role_conditions(p, res_type, perm) + _scope_conditions(p, res_type, perm))


def row_conditions(p: Principal, res_type: str, perm: str = "r") -> list[ColumnElement[bool]]:
    """The SQL conditions on ``resource`` that confine reads and searches to the grant:
    the role's rules AND the union of the principal's scopes (compartment, granular filters).

    Built once per principal shape and process: the conditions are immutable SQL
    expressions whose only time-dependent value (break-glass expiry) is bound per execution.
    """
    return list(_cached_conditions(PrincipalShape(p), res_type, perm))


def can_see(session: Any, p: Principal, res_type: str, res_id: str, perm: str = "r") -> bool:
    """Whether the current row of ``res_type/res_id`` lies inside the grant (one indexed query)."""
    conds = row_conditions(p, res_type, perm)
    if not conds:
        return True
    stmt = select(ResourceRow.res_id).where(
        ResourceRow.res_type == res_type, ResourceRow.res_id == res_id, and_(*conds)
    )
    return session.execute(stmt).first() is not None


def _refs(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    items = value if isinstance(value, list) else [value] if value else []
    return [i["reference"] for i in items if isinstance(i, dict) and isinstance(i.get("reference"), str)]


def _content_in_compartment(res_type: str, res_id: str, data: dict[str, Any], pid: str | None) -> bool:
    if pid is None:
        return False
    if res_type == "Patient":
        return res_id == pid
    from fhirserver.search.indexing import extract

    refs = set(_compartment_refs(res_type))
    rows = extract(res_type, data, only=refs).of("reference")
    return any(r["param"] in refs and (r["target_type"], r["target_id"]) == ("Patient", pid) for r in rows)


def _scopes_admit_content(
    p: Principal, res_type: str, res_id: str, data: dict[str, Any], perms: tuple[str, ...]
) -> bool:
    """Granular scopes confine writes too: the written resource must match a filter.

    For each write permission the principal holds filtered scopes for, one of its scopes
    on that permission must admit the content (its filter matches the resource as it will
    be indexed, and a ``patient/`` scope's compartment holds it); an unfiltered one admits
    whatever the role rules do. Permissions are checked one by one, so a filtered ``.rs``
    beside an unfiltered ``.c`` leaves creating unfiltered.
    """
    confine = _compartment_confines(p, res_type)
    in_compartment = _content_in_compartment(res_type, res_id, data, _patient_context(p))
    for perm in perms:
        scopes = p.scopes.covering(res_type, perm)
        if not any(s.filters for s in scopes):
            continue  # the role rules below decide, exactly as without granular scopes
        admitted = [s for s in scopes if in_compartment or not (confine and s.context == "patient")]
        if not any(scope_filters.matches(res_type, s.filters, data) for s in admitted):
            return False
    return True


def content_in_grant(
    p: Principal, res_type: str, res_id: str, data: dict[str, Any], *, perm: str | None = None
) -> bool:
    """Whether a resource with this content would be visible to ``p`` (checked before a write).

    ``perm`` is the write (``c`` or ``u``); without it both are checked, which never widens.
    """
    if not _scopes_admit_content(p, res_type, res_id, data, (perm,) if perm else ("c", "u")):
        return False
    if p.is_system or res_type in DIRECTORY_TYPES:
        return True
    pid = _patient_context(p) if (p.role == "patient" or p.patient) else None
    patient_only = p.role == "patient" or (
        res_type in PHI_TYPES
        and p.scopes.contexts_for(res_type, "c") | p.scopes.contexts_for(res_type, "u") == {"patient"}
    )
    if res_type == "Patient":
        in_patient = pid is not None and res_id == pid
        if p.role == "patient":
            return in_patient
        pracs = {f"Practitioner/{x}" for x in _care_practitioners(p)}
        in_care = bool(pracs & set(_refs(data, "generalPractitioner")))
        return in_care and (in_patient if patient_only else True)
    if res_type == "Communication":
        parties = {r for param in descriptor(res_type).practitioner_params for r in _refs(data, param)}
        subject = set(_refs(data, "subject"))
        if patient_only:
            return pid is not None and f"Patient/{pid}" in (parties | subject)
        pracs = {f"Practitioner/{x}" for x in _care_practitioners(p)}
        # A provider's own messages are always theirs; messages about a patient are checked
        # against the patient's primary providers by the WebMail rules (they need a read).
        return bool(pracs & parties) or bool(subject)
    return False


def require_content_in_grant(
    p: Principal, res_type: str, res_id: str, data: dict[str, Any], *, perm: str | None = None
) -> None:
    if not content_in_grant(p, res_type, res_id, data, perm=perm):
        raise forbidden("The resource would lie outside what this user may access")

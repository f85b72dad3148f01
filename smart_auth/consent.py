"""What a user has agreed to share with a third-party client (table ``oauth_consent``).

One row per user and client holding the scopes last approved. A later request that
asks for nothing beyond them skips the consent page; asking for more shows it again.
First-party clients (our portal and console) never need consent.

The consent page lists every scope offered as a ticked box (A12). What the user keeps
(:func:`kept`) only ever narrows what was offered, and keeps the scopes consistent:

- ``launch/patient`` (or ``launch``) is the patient context. Unticking it withdraws the
  context, and with it the ``patient/`` scopes, which mean nothing without a patient.
- ``fhirUser`` is a claim of the id_token, so it goes when ``openid`` is unticked.
- Unticking ``offline_access`` / ``online_access`` means no refresh token.
- A scope that also writes can be narrowed to reading only (:func:`read_only_variant`).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fhirserver.core.scopes import ScopeError, parse_scope
from smart_auth.hashing import utcnow
from smart_auth.models import Consent

CONTEXT_SCOPES = ("launch/patient", "launch")
# Shown under a scope whose unticking takes others with it.
NOTES = {
    "launch/patient": "Without this, the app gets none of the patient record permissions on this page.",
    "launch": "Without this, the app gets none of the patient record permissions on this page.",
    "openid": "Without this, the app does not learn which person record is yours either.",
}


def _is_patient_scope(token: str) -> bool:
    try:
        rs = parse_scope(token)
    except ScopeError:
        return False
    return rs is not None and rs.context == "patient"


def read_only_variant(scope: str) -> str | None:
    """``scope`` narrowed to reading and searching, when it grants more than that; else None.

    The consent page offers it beside each such scope (A12: narrow to a sub-scope), e.g.
    ``patient/Communication.cruds`` -> ``patient/Communication.rs``, filters kept.
    """
    try:
        rs = parse_scope(scope)
    except ScopeError:
        return None
    if rs is None:
        return None
    reading = rs.permissions & {"r", "s"}
    if not reading or reading == rs.permissions:
        return None
    return rs.with_permissions(reading)


def kept(offered: list[str], ticked: list[str], read_only: list[str] | None = None) -> list[str]:
    """The scopes the user approved: those of ``offered`` still ticked, in offered order.

    A ticked value that was never offered is ignored (a POST never widens a grant), a
    scope also named in ``read_only`` is narrowed to its reading part, and scopes that
    depend on an unticked one go with it (see the module docstring).
    """
    narrow = set(read_only or ())
    chosen = [(read_only_variant(s) or s) if s in narrow else s for s in offered if s in set(ticked)]
    if any(c in offered and c not in chosen for c in CONTEXT_SCOPES):
        chosen = [s for s in chosen if not _is_patient_scope(s)]
    if "openid" not in chosen:
        chosen = [s for s in chosen if s != "fhirUser"]
    return chosen


def notes(offered: list[str]) -> dict[str, str]:
    """The notes of the consent page, for the scopes offered that take others with them."""
    has_patient_scopes = any(_is_patient_scope(s) for s in offered)
    out = {s: NOTES[s] for s in offered if s in NOTES}
    if not has_patient_scopes:
        out = {s: n for s, n in out.items() if s not in CONTEXT_SCOPES}
    if "fhirUser" not in offered:
        out.pop("openid", None)
    return out


def granted(session: Session, user_id: str, client_id: str) -> list[str]:
    row = session.execute(
        select(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    ).scalar_one_or_none()
    return row.scope.split() if row else []


def record(session: Session, user_id: str, client_id: str, scopes: list[str]) -> None:
    row = session.get(Consent, (user_id, client_id))
    if row is None:
        row = Consent(user_id=user_id, client_id=client_id, scope="", granted_at=utcnow())
        session.add(row)
    row.scope = " ".join(scopes)
    row.granted_at = utcnow()
    session.flush()


def withdraw(session: Session, user_id: str, client_id: str) -> None:
    session.execute(delete(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id))

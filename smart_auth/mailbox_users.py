"""Who receives the mail addressed to a Patient or Practitioner (``fhirserver.core.ports.MailboxUsers``).

The FHIR side writes one mailbox row per (message, user) but knows no accounts; this
module answers for it, and recomputes a user's rows when the accounts side changes who
they are or whom they work for (in the same transaction). The rule mirrors what the
unread count has always meant: an account's own ``fhirUser``; for staff (no ``fhirUser``)
the providers they are assigned to.
"""

from __future__ import annotations

from sqlalchemy import and_, select, union_all
from sqlalchemy.orm import Session

from fhirserver.webmail import mailbox
from smart_auth.models import StaffAssignment, UserAccount


def users_for(session: Session, recipient_refs: list[str]) -> list[tuple[str, str]]:
    """(user id, reference) for each account that reads mail sent to one of ``recipient_refs``."""
    refs = sorted(set(recipient_refs))
    if not refs:
        return []
    own = select(UserAccount.id, UserAccount.fhir_user).where(UserAccount.fhir_user.in_(refs))
    staff = (
        select(StaffAssignment.user_id, StaffAssignment.practitioner_ref)
        .join(UserAccount, and_(UserAccount.id == StaffAssignment.user_id, UserAccount.fhir_user.is_(None)))
        .where(StaffAssignment.practitioner_ref.in_(refs))
    )
    # One round trip: this runs in every message's write transaction.
    return sorted({(str(u), str(r)) for u, r in session.execute(union_all(own, staff)).all()})


def refs_of(session: Session, user: UserAccount) -> list[str]:
    """The references whose mail this account reads."""
    if user.fhir_user:
        return [user.fhir_user]
    rows = session.execute(select(StaffAssignment.practitioner_ref).where(StaffAssignment.user_id == user.id))
    return sorted(str(r) for r in rows.scalars())


def recompute(session: Session, user: UserAccount) -> None:
    """Rebuild the user's mailbox rows after a change of identity or staff assignments."""
    session.flush()
    mailbox.recompute_user(session, user.id, refs_of(session, user))

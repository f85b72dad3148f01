"""What a user has agreed to share with a third-party client (table ``oauth_consent``).

One row per user and client holding the scopes last approved. A later request that
asks for nothing beyond them skips the consent page; asking for more shows it again.
First-party clients (our portal and console) never need consent.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from smart_auth.hashing import utcnow
from smart_auth.models import Consent


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

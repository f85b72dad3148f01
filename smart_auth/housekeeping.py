"""Deletes what the login server no longer needs, so that no table grows without bound.

Run every ten minutes by the Celery beat schedule (``notifier.tasks.purge_expired``;
``make run`` runs beat too). Each part keeps what could still matter: a redeemed code
stays as long as its grant (a replay must still revoke it), a revoked grant as long as a
token of it could be presented, a throttle row as long as it delays or counts anything.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from smart_auth import assertion_replay, codes, grants, launch, refresh_tokens, sessions, throttle
from smart_auth.hashing import utcnow
from smart_auth.tokens import MAX_LIFETIME


def purge(session: Session, settings: Settings) -> dict[str, int]:
    """Delete every expired row; returns how many of each kind went. The caller commits."""
    now = utcnow()
    return {
        "sessions": sessions.purge_expired(session, settings),
        "refresh_tokens": refresh_tokens.purge(session),
        "grants": grants.purge(session, now, timedelta(seconds=MAX_LIFETIME + 60)),
        "codes": codes.purge(session),
        "launches": launch.purge(session),
        "throttle": throttle.purge(session, settings, now),
        "assertion_jtis": assertion_replay.purge(session, now),
    }

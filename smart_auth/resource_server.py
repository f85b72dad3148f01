"""What the FHIR API asks of the authorization server on every request: is this token live?

:class:`SmartTokenAuthority` implements ``fhirserver.core.ports.TokenAuthority``. Two steps:

1. The token's signature and claims (``smart_auth.tokens.verify_signature``). They never
   change, so each process caches them per token (bounded, until the token's ``exp``);
   the times (expiry, ``nbf``) are checked on every use all the same.
2. Its grant's state: one primary-key lookup of ``oauth_grant`` joined to the account, its
   staff assignments (staff requests need them anyway) and its live break-glass grants
   (a provider's reads need them for the access conditions and the audit record's
   purposeOfUse; folding them in saves each provider request a round trip). Never cached:
   a revoked grant, a disabled account or a changed role is refused on the very next
   request, in every process and on every instance, with nothing but the database.
   A plain read of a patient or provider folds the same check into its own query instead
   (``PendingGrant``): the read's one round trip fetches the bytes and checks the grant.

   A backend service's token (``role`` = ``system``, ``smart_auth.backend_services``) has
   no account behind it: its grant is joined to its client instead, which must still be
   registered as a backend client (:data:`SYSTEM_GRANT_STATE`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, exists, select
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.ports import Identity, PendingGrant
from fhirserver.models import BreakGlassGrant
from smart_auth.clients import BACKEND_AUTH_METHOD
from smart_auth.models import OAuthClient, OAuthGrant, StaffAssignment, UserAccount
from smart_auth.tokens import InvalidToken, check_times, verify_signature

CACHE_SIZE = 4096


class VerifiedTokens:
    """A per-process, thread-safe LRU of verified claims, keyed by the token itself."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            claims = self._items.get(token)
            if claims is not None:
                self._items.move_to_end(token)
            return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        with self._lock:
            self._items[token] = claims
            self._items.move_to_end(token)
            now = time.time()
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            # Drop expired entries at the old end: they can never be used again.
            while self._items:
                oldest = next(iter(self._items.values()))
                if oldest["exp"] > now:
                    break
                self._items.popitem(last=False)


_GRANT = OAuthGrant.__table__
_USER = UserAccount.__table__
_STAFF = StaffAssignment.__table__
_CLIENT = OAuthClient.__table__
_GLASS = BreakGlassGrant.__table__
# Built once: the check runs on every request, and building the statement cost as much as
# running it. Both outer joins are empty for almost everyone (staff have assignments and no
# break-glass grants, providers the reverse), so the rows are one per assignment or grant.
GRANT_STATE = (
    select(_GRANT.c.revoked_at, _USER.c.active, _USER.c.role, _STAFF.c.practitioner_ref, _GLASS.c.patient_id)
    .select_from(
        _GRANT.join(_USER, _USER.c.id == _GRANT.c.user_id)
        .outerjoin(_STAFF, _STAFF.c.user_id == _USER.c.id)
        .outerjoin(
            _GLASS,
            and_(
                _GLASS.c.user_id == _USER.c.id,
                _GLASS.c.expires_at > bindparam("now"),
                _GLASS.c.revoked_at.is_(None),
            ),
        )
    )
    .where(_GRANT.c.id == bindparam("grant_id"), _GRANT.c.user_id == bindparam("user_id"))
)


# The same check as a condition, for a read that folds it into its own query (PendingGrant):
# the grant by primary key, not revoked, of an active account of the same role.
GRANT_LIVE = exists(
    select(_GRANT.c.id)
    .select_from(_GRANT.join(_USER, _USER.c.id == _GRANT.c.user_id))
    .where(
        _GRANT.c.id == bindparam("pending_grant_id"),
        _GRANT.c.user_id == bindparam("pending_user_id"),
        _GRANT.c.revoked_at.is_(None),
        _USER.c.active.is_(True),
        _USER.c.role == bindparam("pending_role"),
    )
)
# Whose grants a read may check in its own query: the roles whose access conditions need
# nothing else from the lookup (patients have no assignments and no break-glass grants; a
# provider's break-glass grants are a subquery of the read). Staff need their assignments
# first, and a system token's grant is its client's.
DEFERRABLE_ROLES = frozenset({"patient", "provider"})


class LiveGrant(NamedTuple):
    """What the grant check found besides "live": the account's staff assignments and the
    patients its live break-glass grants open (both sorted; empty for most accounts)."""

    staff_of: tuple[str, ...] = ()
    break_glass: tuple[str, ...] = ()


# A system token's grant: its client's, with the client as subject, and the client still a
# backend client (private_key_jwt). Prebuilt like GRANT_STATE.
SYSTEM_GRANT_STATE = (
    select(_GRANT.c.revoked_at, _CLIENT.c.token_endpoint_auth_method)
    .select_from(_GRANT.join(_CLIENT, _CLIENT.c.client_id == _GRANT.c.client_id))
    .where(
        _GRANT.c.id == bindparam("grant_id"),
        _GRANT.c.user_id == bindparam("client_id"),
        _GRANT.c.client_id == bindparam("client_id"),
    )
)
SYSTEM_ROLE = "system"


def system_grant_state(session: Session, grant_id: str, client_id: str) -> LiveGrant | None:
    """A LiveGrant when a backend token's grant is live and its client still a backend client, else None."""
    row = session.connection().execute(SYSTEM_GRANT_STATE, {"grant_id": grant_id, "client_id": client_id}).first()
    if row is None or row[0] is not None or row[1] != BACKEND_AUTH_METHOD:
        return None
    return LiveGrant()


def grant_state(session: Session, grant_id: str, user_id: str, role: str) -> LiveGrant | None:
    """The token's grant when it is live (with what the same lookup found), else None.

    One query: the grant by primary key, its account (active, same role), the account's
    assignments and its live break-glass grants (LEFT JOINs: no rows for most accounts).
    Live is by the server's clock at the time of the request, exactly as
    ``fhirserver.core.access.break_glass_patients`` decides it. Core on the session's
    connection: it runs on every request, and the ORM's result processing tripled its cost
    (measured: 350 us against 125 us, the same as ``SELECT 1``). A ``system`` token
    (``user_id`` is its client) takes :func:`system_grant_state` instead.
    """
    if role == SYSTEM_ROLE:
        return system_grant_state(session, grant_id, user_id)
    params = {"grant_id": grant_id, "user_id": user_id, "now": datetime.now(UTC)}
    rows = session.connection().execute(GRANT_STATE, params).all()
    if not rows:
        return None
    revoked_at, active, current_role, _, _ = rows[0]
    if revoked_at is not None or not active or current_role != role:
        return None
    return LiveGrant(
        tuple(sorted({r[3] for r in rows if r[3]})),
        tuple(sorted({r[4] for r in rows if r[4]})) if role == "provider" else (),
    )


class SmartTokenAuthority:
    """Bearer tokens as the FHIR API sees them: signed by us, in time, and of a live grant."""

    def __init__(self, settings: Settings, *, check_grants: bool = True) -> None:
        self.settings = settings
        self.cache = VerifiedTokens()
        # Only the benchmark turns this off, to measure what the per-request check costs.
        self.check_grants = check_grants

    def claims(self, token: str) -> dict[str, Any]:
        claims = self.cache.get(token)
        if claims is None:
            claims = verify_signature(token, self.settings)
            self.cache.put(token, claims)
        check_times(claims)
        return claims

    def authenticate(self, session: Session, token: str, *, defer: bool = False) -> Identity:
        claims = self.claims(token)
        if not self.check_grants:
            return Identity(claims)
        if defer and claims["role"] in DEFERRABLE_ROLES:
            return Identity(claims, (), () if claims["role"] == "patient" else None, self._pending(claims))
        live = grant_state(session, str(claims["gid"]), str(claims["sub"]), str(claims["role"]))
        if live is None:
            raise InvalidToken("token revoked")
        return Identity(claims, live.staff_of, live.break_glass)

    def _pending(self, claims: dict[str, Any]) -> PendingGrant:
        grant_id, user_id, role = str(claims["gid"]), str(claims["sub"]), str(claims["role"])
        return PendingGrant(
            live=GRANT_LIVE,
            params={"pending_grant_id": grant_id, "pending_user_id": user_id, "pending_role": role},
            confirm=lambda session: grant_state(session, grant_id, user_id, role) is not None,
        )

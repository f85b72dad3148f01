"""The interfaces through which the FHIR server reaches accounts, tokens and clients.

Dependencies point one way: ``smart_auth`` (accounts, OAuth) imports the FHIR server's
configuration, database, scopes and audit; ``fhirserver`` never imports ``smart_auth``.
What the FHIR side needs from accounts is written down here as small protocols,
and the composition roots (``fhirserver.app``, ``fhirserver.cli``, ``fhirserver.seed``)
wire ``smart_auth``'s implementations in:

- :class:`TokenAuthority` - from a bearer token to a live identity. It is handed to the
  ``/fhir`` blueprint by the app factory (per app), and it checks the token's grant on
  every request, so revocation takes effect at once.
- :class:`AllowedOrigins` - which browser origins CORS allows on ``/fhir``; handed to
  the ``/fhir`` blueprint by the app factory, like the token check.
- :class:`PortalAccounts` - the state of a patient's portal account, and granting or
  resetting it. The WebMail rules run wherever a Communication is written (web, CLI,
  seed, tests), so this one is installed per process with :func:`install_portal_accounts`.
  Until it is installed, anything that needs it fails loudly (closed by default).
- :class:`MailboxUsers` - which user accounts receive mail addressed to a Patient or
  Practitioner (the accounts with that identity, and staff working for a provider); the
  WebMail rules write the mailbox rows with it (``fhirserver.webmail.mailbox``). Installed
  per process with :func:`install_mailbox_users`, like PortalAccounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.errors import unauthorized

# The states of a patient's portal account (docs/webmail-profile.md has the transitions).
PORTAL_NONE = "none"
PORTAL_ACTIVE = "active"
PORTAL_DISABLED = "disabled"


class TokenRejected(Exception):
    """The bearer token must not be accepted; ``str(exc)`` is a short reason safe to return."""


@dataclass(frozen=True)
class Identity:
    """A verified access token whose grant is live: its claims, plus what the same lookup
    found: the staff assignments (staff see their providers' patients) and the patients the
    account's live break-glass grants open (``None``: not looked up)."""

    claims: dict[str, Any]
    staff_of: tuple[str, ...] = ()
    break_glass: tuple[str, ...] | None = None
    pending: PendingGrant | None = None


@dataclass(eq=False)
class PendingGrant:
    """A token whose grant's state the request's own query checks, saving a round trip.

    Only a plain read takes this (``Repository.read``): it selects ``live`` (with ``params``)
    as a column beside the stored bytes and answers 401 when it is false. A read that finds
    no row calls ``confirm`` instead, so that a revoked token never learns a 404 from a 401.
    The read also notes whether any break-glass grant of the user was live
    (``break_glass_live``), which the audit record's purposeOfUse needs.

    Whatever the interaction does, the router settles the check before it answers
    (:meth:`settle`), so no answer, an error included, goes out on an unchecked grant.
    """

    live: ColumnElement[bool]
    params: dict[str, Any]
    confirm: Callable[[Session], bool]
    break_glass_live: bool | None = field(default=None)
    state: bool | None = field(default=None)  # None: not checked yet

    def record(self, live: bool) -> None:
        """The state the read's own query found; 401 when the grant is not live."""
        self.state = bool(live)
        if not self.state:
            raise unauthorized("invalid_token")

    def settle(self, session: Session) -> None:
        """Check the grant now unless a query did already; 401 when it is not live."""
        self.record(self.confirm(session) if self.state is None else self.state)


class TokenAuthority(Protocol):
    def authenticate(self, session: Session, token: str, *, defer: bool = False) -> Identity:
        """Verify ``token`` and check that its grant is live; raise TokenRejected otherwise.

        ``defer``: the caller's own query can check the grant (a plain read); the authority
        may then return an Identity with a :class:`PendingGrant` instead of querying now.
        """
        ...


class AllowedOrigins(Protocol):
    """The browser origins that CORS lets read the API's answers (docs/security.md, A6).

    The allowlist is the origins of every registered client's redirect URIs plus
    ``Settings.cors_origins``; clients are registered on the login side, hence a port.
    """

    def is_allowed(self, origin: str) -> bool:
        """True when ``origin`` (an ``Origin`` header's value) may read cross-origin answers."""
        ...


@dataclass(frozen=True)
class PortalCredentials:
    """A new one-time password for a patient's portal account (shown once, never stored)."""

    username: str
    password: str
    user_id: str


class PortalStateError(Exception):
    """The operation does not fit the account's state; ``state`` is one of the PORTAL_ states."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


class PortalAccounts(Protocol):
    def portal_state(self, session: Session, patient_id: str) -> str:
        """PORTAL_NONE, PORTAL_ACTIVE or PORTAL_DISABLED."""
        ...

    def grant_portal_access(
        self, session: Session, settings: Settings, *, patient_id: str, first_name: str
    ) -> PortalCredentials:
        """Create the account (state none -> active); PortalStateError in any other state."""
        ...

    def reset_portal_password(self, session: Session, settings: Settings, *, patient_id: str) -> PortalCredentials:
        """New one-time password for an active account; ends its sessions and tokens."""
        ...


_portal_accounts: PortalAccounts | None = None


def install_portal_accounts(impl: PortalAccounts) -> None:
    """Wire the accounts implementation in (called by each composition root at start-up)."""
    global _portal_accounts
    _portal_accounts = impl


def portal_accounts() -> PortalAccounts:
    if _portal_accounts is None:
        raise RuntimeError(
            "no PortalAccounts installed: call fhirserver.core.ports.install_portal_accounts from the composition root"
        )
    return _portal_accounts


class MailboxUsers(Protocol):
    def users_for(self, session: Session, recipient_refs: list[str]) -> list[tuple[str, str]]:
        """(user id, recipient reference) for every account that reads mail sent to one of the refs.

        An account whose ``fhirUser`` is the reference, and a staff account (one without a
        ``fhirUser``) assigned to the referenced provider; a user reached through several
        references appears once per reference.
        """
        ...


_mailbox_users: MailboxUsers | None = None


def install_mailbox_users(impl: MailboxUsers) -> None:
    """Wire the mailbox-users implementation in (each composition root, next to PortalAccounts)."""
    global _mailbox_users
    _mailbox_users = impl


def mailbox_users() -> MailboxUsers:
    if _mailbox_users is None:
        raise RuntimeError(
            "no MailboxUsers installed: call fhirserver.core.ports.install_mailbox_users from the composition root"
        )
    return _mailbox_users

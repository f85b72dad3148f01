"""Who is asking: the verified identity and grant behind one request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fhirserver.core.scopes import ScopeSet

if TYPE_CHECKING:
    from fhirserver.core.ports import PendingGrant


@dataclass(frozen=True)
class Principal:
    """Built by the web layer from a verified access token (or by the CLI for system work).

    ``fhir_user`` is the user's own resource (``Patient/x`` or ``Practitioner/y``);
    ``patient`` is the patient in launch context; ``staff_of`` lists the providers a
    staff user works for. ``break_glass`` holds the patients the user's live break-glass
    grants open, when the token check looked them up in its own query (``None``: the
    access rules ask the database themselves). The authorization module decides
    everything from these. ``pending`` is set when the token's grant is still to be checked
    by the read's own query (``fhirserver.core.ports.PendingGrant``).
    """

    role: str  # patient | provider | staff | auditor | admin | system
    scopes: ScopeSet
    user_id: str | None = None
    fhir_user: str | None = None
    client_id: str | None = None
    patient: str | None = None
    staff_of: tuple[str, ...] = ()
    break_glass: tuple[str, ...] | None = None
    pending: PendingGrant | None = field(default=None, compare=False)
    address: str | None = None
    request_id: str | None = None
    token_jti: str | None = None
    purpose_of_use: str = field(default="TREAT")

    @property
    def is_system(self) -> bool:
        """A system principal: the server itself, or a backend service with a system/ token."""
        return self.role == "system"

    @property
    def is_server(self) -> bool:
        """The server's own work (seed, CLI, worker): a system principal without an access token."""
        return self.role == "system" and self.token_jti is None


def system_principal(reason: str = "system") -> Principal:
    """The server itself (seeding, migrations, the worker): full access, audited as the server."""
    return Principal(role="system", scopes=ScopeSet.parse("system/*.cruds"), client_id=reason)

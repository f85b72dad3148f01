"""What domain modules plug into the FHIR core: write rules, operations, search-entry decorators.

The core (repository, router) calls these tables; it never imports the modules that fill
them. ``fhirserver.rules`` registers the WebMail rules and operations here, and the
repository loads it on first use, so every process that writes gets the same rules.

Every operation declares the scope permission it needs on its resource type (``c``,
``r``, ``u``, ``d`` or ``s``) and the HTTP methods it answers; the core checks both
before the handler runs, so an operation without a declared permission cannot exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.principal import Principal
from fhirserver.core.stored import Stored

if TYPE_CHECKING:
    from fhirserver.core.http import FhirResponse
    from fhirserver.core.router import Call


@dataclass
class WriteContext:
    """What a type's write rules see: they may change ``data`` and raise FhirError."""

    session: Session
    settings: Settings
    principal: Principal
    res_type: str
    res_id: str
    data: dict[str, Any]
    old: dict[str, Any] | None
    read_any: Callable[[str, str], dict[str, Any] | None]
    stored: Stored | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # The index rows the write stored (fhirserver.search.indexing.IndexEntries), for
    # after-write rules that need what was indexed without reading it back.
    index: Any = None
    # True when no row existed before this write (a create): nothing to replace or reread.
    created: bool = False


WriteRule = Callable[[WriteContext], None]
# res_type -> rules run before the write (validate, stamp) and after it (outbox rows).
BEFORE_WRITE: dict[str, list[WriteRule]] = {}
AFTER_WRITE: dict[str, list[WriteRule]] = {}


def register_rules(res_type: str, before: WriteRule | None = None, after: WriteRule | None = None) -> None:
    if before and before not in BEFORE_WRITE.setdefault(res_type, []):
        BEFORE_WRITE[res_type].append(before)
    if after and after not in AFTER_WRITE.setdefault(res_type, []):
        AFTER_WRITE[res_type].append(after)


PERMISSION_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


@dataclass(frozen=True)
class Operation:
    """A FHIR operation: its handler, the scope permission it needs, and its HTTP methods."""

    handler: Callable[[Call], FhirResponse]
    permission: str
    methods: tuple[str, ...]
    summary: str

    def scope_text(self, res_type: str) -> str:
        """How the CapabilityStatement and docs/ state the operation's requirement."""
        word = PERMISSION_WORDS[self.permission]
        return (
            f"{self.summary} Needs a scope with {word} ('{self.permission}') on {res_type}, "
            f"e.g. user/{res_type}.{self.permission}; {' or '.join(self.methods)}."
        )


# (resource type, "$name", "type" | "instance") -> the operation.
OPERATIONS: dict[tuple[str, str, str], Operation] = {}
# res_type -> function(call, ids) -> {id: entry extension JSON}; decorates search entries.
ENTRY_DECORATORS: dict[str, Callable[[Call, list[str]], dict[str, list[dict[str, Any]]]]] = {}


# res_type -> functions(session, principal, request, restrict) -> a SearchPage, or None to pass.
# The first planner that answers wins; when none does, the generic search runs. A planner
# answers only searches it serves exactly as the generic one would (same rows, order and
# paging), from a table of its own (the WebMail inbox, the chart).
SearchPlanner = Callable[[Session, Principal, Any, Any], Any]
SEARCH_PLANNERS: dict[str, list[SearchPlanner]] = {}


def register_search_planner(res_type: str, planner: SearchPlanner) -> None:
    if planner not in SEARCH_PLANNERS.setdefault(res_type, []):
        SEARCH_PLANNERS[res_type].append(planner)


def register_operation(
    res_type: str,
    name: str,
    level: str,
    handler: Callable[[Call], FhirResponse],
    *,
    permission: str,
    methods: tuple[str, ...] = ("POST",),
    summary: str = "",
) -> None:
    if permission not in PERMISSION_WORDS:
        raise ValueError(f"{name}: permission must be one of {''.join(PERMISSION_WORDS)}")
    if level not in ("type", "instance") or not methods:
        raise ValueError(f"{name}: a level (type or instance) and at least one method are required")
    OPERATIONS[(res_type, name, level)] = Operation(handler, permission, tuple(methods), summary)

"""SMART scopes: v2 syntax (``patient/Communication.rs``), with v1 (``.read``/``.write``/``.*``) mapped.

The FHIR core owns the scope grammar because every access decision reads it
(``fhirserver.core.access``); the authorization server (``smart_auth``) imports it to
validate and narrow what clients ask for, so both sides parse scopes the same way.

Parsing never widens: an unknown suffix, an out-of-order permission string
(``.dus``) or an unknown context is dropped, not guessed at. Fine-grained query
parameters on a scope (``?category=...``) are not supported yet and are rejected by
:func:`parse_scope` (the authorization server answers ``invalid_scope``).
"""

from __future__ import annotations

from dataclasses import dataclass

PERMISSION_ORDER = "cruds"
V1_MAP = {"read": "rs", "write": "cud", "*": "cruds"}
CONTEXTS = ("patient", "user", "system")


class ScopeError(ValueError):
    pass


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a type name or "*"
    permissions: frozenset[str]  # subset of c r u d s

    def covers(self, resource_type: str, permission: str) -> bool:
        return self.resource_type in ("*", resource_type) and permission in self.permissions


def parse_scope(token: str) -> ResourceScope | None:
    """Return the resource scope of one scope token, or None when it is not a resource scope."""
    context, slash, rest = token.partition("/")
    if not slash or context not in CONTEXTS:
        return None
    rtype, dot, perms = rest.partition(".")
    if not dot or not rtype:
        raise ScopeError(f"malformed scope {token!r}")
    if "?" in perms:
        raise ScopeError("fine-grained scope parameters are not supported")
    if perms in V1_MAP:
        return ResourceScope(context, rtype, frozenset(V1_MAP[perms]))
    # v2: letters must be a non-empty, in-order subset of "cruds".
    positions = [PERMISSION_ORDER.find(ch) for ch in perms]
    if not perms or -1 in positions or positions != sorted(set(positions)):
        raise ScopeError(f"malformed scope {token!r}")
    return ResourceScope(context, rtype, frozenset(perms))


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of one token, parsed once per request."""

    raw: tuple[str, ...]
    resources: tuple[ResourceScope, ...]

    @classmethod
    def parse(cls, scope: str) -> ScopeSet:
        raw = tuple(s for s in scope.split() if s)
        parsed: list[ResourceScope] = []
        for s in raw:
            try:
                rs = parse_scope(s)
            except ScopeError:
                continue  # a malformed scope grants nothing
            if rs is not None:
                parsed.append(rs)
        return cls(raw, tuple(parsed))

    def allows(self, resource_type: str, permission: str, context: str | None = None) -> bool:
        return any(
            rs.covers(resource_type, permission) and (context is None or rs.context == context) for rs in self.resources
        )

    def contexts_for(self, resource_type: str, permission: str) -> set[str]:
        return {rs.context for rs in self.resources if rs.covers(resource_type, permission)}

    def has(self, scope: str) -> bool:
        return scope in self.raw


def validate_requested(scope: str) -> list[str]:
    """Check a requested scope string; raise ScopeError on anything malformed (never widen)."""
    out = []
    for s in scope.split():
        parse_scope(s)
        out.append(s)
    return out

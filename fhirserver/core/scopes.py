"""SMART scopes: v2 syntax (``patient/Communication.rs``), with v1 (``.read``/``.write``/``.*``) mapped.

The FHIR core owns the scope grammar because every access decision reads it
(``fhirserver.core.access``); the authorization server (``smart_auth``) imports it to
validate and narrow what clients ask for, so both sides parse scopes the same way.

Parsing never widens: an unknown suffix, an out-of-order permission string
(``.dus``) or an unknown context is dropped, not guessed at.

SMART 2 granular scopes (``patient/Communication.rs?category=system|code``) narrow a
scope to the resources that match a filter. Only the parameters a type declares in
``fhirserver.core.resource_types.SCOPE_FILTERS`` may appear (anything else is a
:class:`ScopeError`, which the authorization server answers ``invalid_scope``), in the
form ``name=value[,value...]`` (values OR'd), several names joined by ``&`` (AND'd).
A value is a token: ``code``, ``system|code``, ``|code`` (no system) or ``system|``
(any code of the system). Values are taken literally: FHIR's backslash escapes and
percent-encoding are refused rather than interpreted, so that the scope the user saw is
the filter applied. A filter narrows which *rows* a scope reaches, never which
interactions: ``covers`` ignores it and ``fhirserver.core.access`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from fhirserver.core.resource_types import SCOPE_FILTERS

PERMISSION_ORDER = "cruds"
V1_MAP = {"read": "rs", "write": "cud", "*": "cruds"}
CONTEXTS = ("patient", "user", "system")
# Index columns are 255 characters: a longer system or code would be cut, and two values
# that differ only after the cut would match each other (a widening). Refused instead.
MAX_TOKEN_PART = 255
MAX_FILTER_VALUES = 20
# Characters a filter value may not hold: escapes and encodings we do not interpret.
_REFUSED_CHARS = frozenset('\\%"=&?,')

# One parameter's allowed values: (name, (value, ...)); a scope's filters are sorted by name.
Filter = tuple[str, tuple[str, ...]]


class ScopeError(ValueError):
    pass


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a type name or "*"
    permissions: frozenset[str]  # subset of c r u d s
    # Granular filters, AND'd over parameters; empty: every resource of the type.
    filters: tuple[Filter, ...] = ()

    def covers(self, resource_type: str, permission: str) -> bool:
        """The interaction is allowed (a filter then narrows the rows, in access.py)."""
        return self.resource_type in ("*", resource_type) and permission in self.permissions

    @property
    def query(self) -> str:
        """The filters in scope syntax (``category=a,b``); empty when unfiltered."""
        return "&".join(f"{name}={','.join(values)}" for name, values in self.filters)

    def filter_within(self, outer: ResourceScope) -> bool:
        """Every resource this scope's filter admits is admitted by ``outer``'s filter."""
        return filters_within(self.filters, outer.filters)

    def with_permissions(self, perms: frozenset[str] | set[str], resource_type: str | None = None) -> str:
        """This scope written in v2 syntax with other permissions (and type), filters kept."""
        letters = "".join(ch for ch in PERMISSION_ORDER if ch in perms)
        query = self.query
        return f"{self.context}/{resource_type or self.resource_type}.{letters}" + (f"?{query}" if query else "")


def token_value_within(inner: str, outer: str) -> bool:
    """Token ``inner`` matches only resources that token ``outer`` matches too."""
    if inner == outer:
        return True
    i_sys, i_bar, i_code = inner.rpartition("|")
    o_sys, o_bar, o_code = outer.rpartition("|")
    if not o_bar:  # outer: a code in any system
        return bool(i_code) and i_code == o_code
    if not o_code:  # outer: ``system|``, any code of that system
        return bool(i_bar) and bool(o_sys) and i_sys == o_sys
    return False


def filters_within(inner: tuple[Filter, ...], outer: tuple[Filter, ...]) -> bool:
    """Filter ``inner`` is at least as narrow as ``outer`` (an unfiltered outer admits everything)."""
    mine = dict(inner)
    for name, allowed in outer:
        values = mine.get(name)
        if values is None or not all(any(token_value_within(v, a) for a in allowed) for v in values):
            return False
    return True


def _check_value(value: str) -> None:
    if not value or any(ch in _REFUSED_CHARS or ch.isspace() or not ch.isprintable() for ch in value):
        raise ScopeError("a scope filter value is empty or holds an unsupported character")
    parts = value.split("|")
    if len(parts) > 2 or parts == ["", ""] or (len(parts) == 1 and not parts[0]):
        raise ScopeError("a scope filter value must be code, system|code, |code or system|")
    if any(len(p) > MAX_TOKEN_PART for p in parts):
        raise ScopeError(f"a scope filter system or code is longer than {MAX_TOKEN_PART} characters")


def parse_filters(resource_type: str, query: str) -> tuple[Filter, ...]:
    """The filters of ``?query`` on ``resource_type``; ScopeError unless the type declares each."""
    allowed = SCOPE_FILTERS.get(resource_type, ())
    found: dict[str, tuple[str, ...]] = {}
    for part in query.split("&"):
        name, eq, raw = part.partition("=")
        if not eq or not raw:
            raise ScopeError("a scope filter must be name=value")
        if name not in allowed:
            # Names only: a scope is not PHI, but an echo of arbitrary input has no use here.
            raise ScopeError(f"{resource_type} scopes cannot filter by this parameter")
        if name in found:
            raise ScopeError("a scope filter names a parameter twice (use value,value for either)")
        values = raw.split(",")
        if len(values) > MAX_FILTER_VALUES:
            raise ScopeError(f"a scope filter has more than {MAX_FILTER_VALUES} values")
        for v in values:
            _check_value(v)
        found[name] = tuple(dict.fromkeys(values))
    return tuple(sorted(found.items()))


def parse_scope(token: str) -> ResourceScope | None:
    """Return the resource scope of one scope token, or None when it is not a resource scope."""
    context, slash, rest = token.partition("/")
    if not slash or context not in CONTEXTS:
        return None
    rtype, dot, perms = rest.partition(".")
    if not dot or not rtype:
        raise ScopeError(f"malformed scope {token!r}")
    perms, question, query = perms.partition("?")
    filters: tuple[Filter, ...] = ()
    if question:
        if rtype == "*" or perms in V1_MAP:
            raise ScopeError("scope filters need a resource type and v2 permissions")
        if not query:
            raise ScopeError("a scope filter must be name=value")
        filters = parse_filters(rtype, query)
    elif perms in V1_MAP:
        return ResourceScope(context, rtype, frozenset(V1_MAP[perms]))
    # v2: letters must be a non-empty, in-order subset of "cruds".
    positions = [PERMISSION_ORDER.find(ch) for ch in perms]
    if not perms or -1 in positions or positions != sorted(set(positions)):
        # The permission string only: a filter part may hold anything the client typed.
        raise ScopeError(f"malformed scope permissions {perms[:10]!r}")
    return ResourceScope(context, rtype, frozenset(perms), filters)


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of one token, parsed once per request."""

    raw: tuple[str, ...]
    resources: tuple[ResourceScope, ...]

    @classmethod
    def parse(cls, scope: str) -> ScopeSet:
        """The parsed scopes of a ``scope`` string; cached per process (a token's scopes are
        parsed on each of its requests, and the parse is pure)."""
        return _parse(scope)

    def allows(self, resource_type: str, permission: str, context: str | None = None) -> bool:
        return any(
            rs.covers(resource_type, permission) and (context is None or rs.context == context) for rs in self.resources
        )

    def contexts_for(self, resource_type: str, permission: str) -> set[str]:
        return {rs.context for rs in self.resources if rs.covers(resource_type, permission)}

    def covering(self, resource_type: str, permission: str) -> tuple[ResourceScope, ...]:
        """The scopes that allow ``permission`` on ``resource_type``: their union is the grant."""
        return tuple(rs for rs in self.resources if rs.covers(resource_type, permission))

    def has(self, scope: str) -> bool:
        return scope in self.raw


def validate_requested(scope: str) -> list[str]:
    """Check a requested scope string; raise ScopeError on anything malformed (never widen)."""
    out = []
    for s in scope.split():
        parse_scope(s)
        out.append(s)
    return out


@lru_cache(maxsize=1024)
def _parse(scope: str) -> ScopeSet:
    raw = tuple(s for s in scope.split() if s)
    parsed: list[ResourceScope] = []
    for s in raw:
        try:
            rs = parse_scope(s)
        except ScopeError:
            continue  # a malformed scope grants nothing
        if rs is not None:
            parsed.append(rs)
    return ScopeSet(raw, tuple(parsed))

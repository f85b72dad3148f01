"""Which scopes a token may carry: requested ∩ client's allowance ∩ the user's role.

Everything here only ever narrows. A requested resource scope that the client's
registration covers entirely is granted exactly as written (so v1 scopes such as
``patient/*.read`` are echoed back as requested); one that is covered only in part
is narrowed to the covered permissions, written in v2 syntax; anything else is
dropped. Malformed scopes are not narrowed but refused (``invalid_scope``) by the
caller, through :func:`fhirserver.core.scopes.validate_requested`.
"""

from __future__ import annotations

from fhirserver.core.scopes import PERMISSION_ORDER, ResourceScope, ScopeError, parse_scope

IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "offline_access", "online_access"})
LAUNCH_PATIENT = "launch/patient"
# EHR launch (smart_auth.launch): the patient comes from the launch; only the console's users mint one.
LAUNCH = "launch"
# Resource-scope contexts each role may hold; non-resource scopes are in ROLE_EXTRAS.
ROLE_CONTEXTS: dict[str, frozenset[str]] = {
    "patient": frozenset({"patient"}),
    "provider": frozenset({"patient", "user"}),
    "staff": frozenset({"patient", "user"}),
    "auditor": frozenset({"user"}),
    "admin": frozenset({"user"}),
}
ROLE_EXTRAS: dict[str, frozenset[str]] = {
    "patient": IDENTITY_SCOPES | {LAUNCH_PATIENT},
    "provider": IDENTITY_SCOPES | {LAUNCH_PATIENT, LAUNCH},
    "staff": IDENTITY_SCOPES | {LAUNCH_PATIENT, LAUNCH},
    "auditor": IDENTITY_SCOPES,
    "admin": IDENTITY_SCOPES,
}


def _safe_parse(token: str) -> ResourceScope | None:
    try:
        return parse_scope(token)
    except ScopeError:
        return None


def _perm_string(perms: frozenset[str] | set[str]) -> str:
    return "".join(ch for ch in PERMISSION_ORDER if ch in perms)


def covers(allowed: list[str], token: str) -> bool:
    """True when ``token`` is entirely within the scopes ``allowed`` (no narrowing needed)."""
    wanted = _safe_parse(token)
    if wanted is None:
        return token in allowed
    for a in allowed:
        have = _safe_parse(a)
        if (
            have is not None
            and have.context == wanted.context
            and have.resource_type in ("*", wanted.resource_type)
            and wanted.permissions <= have.permissions
            and wanted.filter_within(have)
        ):
            return True
    return False


def narrow(allowed: list[str], token: str) -> list[str]:
    """``token`` cut down to what ``allowed`` covers: itself, narrower v2 scopes, or nothing."""
    if covers(allowed, token):
        return [token]
    wanted = _safe_parse(token)
    if wanted is None:
        return []
    # (type, granular filter in scope syntax) -> permissions
    by_type: dict[tuple[str, str], set[str]] = {}
    for a in allowed:
        have = _safe_parse(a)
        if have is None or have.context != wanted.context:
            continue
        if wanted.resource_type == "*":
            rtype = have.resource_type
        elif have.resource_type in ("*", wanted.resource_type):
            rtype = wanted.resource_type
        else:
            continue
        # Granular filters: the narrower of the two; two that neither holds are dropped.
        if wanted.filter_within(have):
            query = wanted.query
        elif have.filter_within(wanted):
            query = have.query
        else:
            continue
        perms = wanted.permissions & have.permissions
        if perms:
            by_type.setdefault((rtype, query), set()).update(perms)
    return [f"{wanted.context}/{t}.{_perm_string(p)}" + (f"?{q}" if q else "") for (t, q), p in sorted(by_type.items())]


def for_client(requested: list[str], client_scope: str) -> list[str]:
    """The requested scopes narrowed to the client's registered allowance."""
    allowed = client_scope.split()
    out: list[str] = []
    for token in requested:
        for s in narrow(allowed, token):
            if s not in out:
                out.append(s)
    return out


def role_allows(role: str, token: str) -> bool:
    rs = _safe_parse(token)
    if rs is None:
        return token in ROLE_EXTRAS.get(role, frozenset())
    return rs.context in ROLE_CONTEXTS.get(role, frozenset())


def for_role(scopes: list[str], role: str) -> list[str]:
    return [s for s in scopes if role_allows(role, s)]


def grant(requested: list[str], client_scope: str, role: str) -> list[str]:
    """requested ∩ client ∩ role, in the order requested."""
    return for_role(for_client(requested, client_scope), role)


def needs_patient(scopes: list[str]) -> bool:
    """A patient must be in context for ``launch/patient``, ``launch`` (our EHR launches carry a
    patient) and for any ``patient/`` scope."""
    if LAUNCH_PATIENT in scopes or LAUNCH in scopes:
        return True
    return any((rs := _safe_parse(s)) is not None and rs.context == "patient" for s in scopes)


def wants_refresh(scopes: list[str]) -> bool:
    return "offline_access" in scopes or "online_access" in scopes


def describe(token: str) -> str:
    """A plain-language line for the consent page."""
    fixed = {
        "openid": "Confirm who you are (sign-in identity)",
        "fhirUser": "Know which person record belongs to your account",
        "launch/patient": "Know which patient record is being used",
        "launch": "Know which patient's chart you opened the application from",
        "offline_access": "Keep access after you sign out, until you revoke it",
        "online_access": "Keep access while you stay signed in",
    }
    if token in fixed:
        return fixed[token]
    rs = _safe_parse(token)
    if rs is None:
        return token
    verbs = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
    actions = [verbs[ch] for ch in PERMISSION_ORDER if ch in rs.permissions]
    what = "all record types" if rs.resource_type == "*" else f"{rs.resource_type} records"
    whose = "of the selected patient" if rs.context == "patient" else "that you can access"
    joined = ", ".join(actions[:-1]) + (" and " if len(actions) > 1 else "") + actions[-1]
    return f"{joined[0].upper()}{joined[1:]} {what} {whose}{_describe_filters(rs)}"


def _describe_value(value: str) -> str:
    system, bar, code = value.rpartition("|")
    if bar and not code:
        return f"any code of {system}"
    return code


def _describe_filters(rs: ResourceScope) -> str:
    """``, only with category notification or alert`` for a granular scope ('' for none).

    The codes say what a user can judge; systems are left out unless a whole system is named.
    """
    if not rs.filters:
        return ""
    parts = [f"{name} {' or '.join(_describe_value(v) for v in values)}" for name, values in rs.filters]
    return ", only with " + " and ".join(parts)

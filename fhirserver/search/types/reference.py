"""Reference parameters: ``Type/id``, ``id`` and absolute URLs of this server.

Only references to resources on this server are indexed, as ``(target_type,
target_id)``: relative ``Type/id`` (a version suffix ``/_history/n`` is dropped) and
absolute URLs under the server base. Contained (``#x``), ``urn:`` and foreign absolute
references are not indexed: they name nothing here, and indexing a foreign
``https://elsewhere/Practitioner/1`` as ``Practitioner/1`` would confuse it with ours
(the authorization rules read these rows). A parameter with ``targets`` indexes only
references to those types (``Communication.patient`` is ``subject`` when a Patient).

Search forms: ``Type/id``, ``id`` (any target type), an absolute URL (ours is made
relative; a foreign one matches nothing), and the ``:Type`` modifier with an id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false

from fhirserver.models import IdxReference
from fhirserver.search.params import SearchParam
from fhirserver.search.types.base import (
    ID_RE,
    TYPE_RE,
    BadModifier,
    BadValue,
    Context,
    Rows,
    TypeHandler,
    check_length,
    unescape,
)


def _is_absolute(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def local_part(ref: str, server_base: str | None) -> str | None:
    """``ref`` relative to this server, or None when it points elsewhere."""
    if not _is_absolute(ref):
        return ref
    if server_base:
        base = server_base.rstrip("/") + "/"
        if ref.startswith(base):
            return ref[len(base) :]
    return None


def split_local(ref: str) -> tuple[str, str] | None:
    """``Type/id`` or ``Type/id/_history/v`` -> (Type, id); anything else -> None."""
    parts = ref.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    if len(parts) != 2 or not TYPE_RE.match(parts[0]) or not ID_RE.match(parts[1]):
        return None
    return parts[0], parts[1]


def _target(node: Any, ctx: Context) -> tuple[str, str] | None:
    ref = node.get("reference") if isinstance(node, dict) else None
    if not isinstance(ref, str) or ref.startswith(("#", "urn:")):
        return None
    local = local_part(ref, ctx.server_base)
    return split_local(local) if local is not None else None


def extract(nodes: list[Any], param: SearchParam, ctx: Context) -> Rows:
    rows: Rows = []
    for node in nodes:
        target = _target(node, ctx)
        if target is not None and (not param.targets or target[0] in param.targets):
            rows.append({"target_type": target[0], "target_id": target[1]})
    return rows


@dataclass(frozen=True)
class RefQuery:
    target_type: str | None
    target_id: str | None  # None: can match nothing here (a foreign URL)


def parse(raw: str, modifier: str | None, param: SearchParam, ctx: Context) -> RefQuery:
    check_length(raw)
    text = unescape(raw)
    if modifier is not None:
        if not TYPE_RE.match(modifier) or (param.targets and modifier not in param.targets):
            raise BadModifier("modifier not supported")
        if not ID_RE.match(text):
            raise BadValue("with a type modifier the value must be an id")
        return RefQuery(modifier, text)
    local = local_part(text, ctx.server_base)
    if local is None:
        return RefQuery(None, None)
    if ID_RE.match(local):
        return RefQuery(None, local)
    target = split_local(local)
    if target is None:
        raise BadValue("the value must be Type/id, an id, or a URL of this server")
    if param.targets and target[0] not in param.targets:
        raise BadValue("the reference type is not a target of this parameter")
    return RefQuery(*target)


def condition(q: RefQuery) -> ColumnElement[bool]:
    if q.target_id is None:
        return false()
    conds = [IdxReference.target_id == q.target_id]
    if q.target_type is not None:
        conds.insert(0, IdxReference.target_type == q.target_type)
    return and_(*conds)


HANDLER = TypeHandler("reference", IdxReference, extract, parse, condition)

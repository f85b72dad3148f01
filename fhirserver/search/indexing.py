"""Index extraction (pure) and the writing of a resource's index rows.

``extract`` turns a resource dict into the rows of the ``idx_*`` tables, one list per
parameter type, with no database in sight (so it is unit-tested directly).
``write_index`` replaces a resource's rows in the caller's transaction: the index is
never stale and never ahead of the data. Only elements named by a parameter in
``params.REGISTRY`` are read, so encrypted elements (Communication topic and payload)
never reach the index: ``params.check_registry`` refuses any parameter over them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from fhirserver.search.params import TYPES, indexed_params
from fhirserver.search.paths import evaluate
from fhirserver.search.types import HANDLERS, handler_for
from fhirserver.search.types.base import Context


@dataclass(frozen=True)
class IndexEntries:
    """The index rows of one resource: ``rows[param_type]`` is a list of dicts holding
    ``param`` and that type's columns (string: value, exact; token: system, code;
    reference: target_type, target_id; date: low, high)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def of(self, param_type: str) -> list[dict[str, Any]]:
        return self.rows.get(param_type, [])

    def for_param(self, name: str) -> list[dict[str, Any]]:
        """The rows of one parameter, without the ``param`` key (handy in tests)."""
        return [
            {k: v for k, v in row.items() if k != "param"}
            for rows in self.rows.values()
            for row in rows
            if row["param"] == name
        ]


def extract(
    res_type: str, resource: dict[str, Any], *, server_base: str | None = None, only: Collection[str] | None = None
) -> IndexEntries:
    """The index rows ``resource`` gives, deduplicated per parameter.

    ``server_base`` (e.g. ``https://host/fhir``) lets absolute references to this
    server be indexed as the relative references they are; without it they are skipped.
    ``only``: the rows of these parameters alone (an access check needs a few, not all).
    """
    ctx = Context(server_base=server_base)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in sorted(TYPES)}
    for param in indexed_params(res_type):
        if only is not None and param.name not in only:
            continue
        nodes = [node for path in param.paths for node in evaluate(resource, path)]
        seen: set[tuple[tuple[str, Any], ...]] = set()
        for row in handler_for(param.type).extract(nodes, param, ctx):
            key = tuple(sorted(row.items()))
            if key not in seen:
                seen.add(key)
                out[param.type].append({"param": param.name, **row})
    return IndexEntries(out)


def delete_index(session: Session, res_type: str, res_id: str) -> None:
    """Remove every index row of one resource (on delete, and before re-indexing)."""
    for handler in HANDLERS.values():
        table = handler.table
        session.execute(delete(table).where(table.res_type == res_type, table.res_id == res_id))


def write_index(
    session: Session,
    res_type: str,
    res_id: str,
    resource: dict[str, Any],
    *,
    server_base: str | None = None,
    fresh: bool = False,
) -> IndexEntries:
    """Replace the index rows of ``res_type/res_id`` with those of ``resource``; returns them.

    ``fresh=True`` skips the delete when the caller knows the resource is new (a create:
    one DELETE per index table saved); the default is always correct. Each table's rows
    go in one executemany. The rows are returned so that write rules (the mailbox) can
    use what was indexed without reading it back.
    """
    entries = extract(res_type, resource, server_base=server_base)
    if not fresh:
        delete_index(session, res_type, res_id)
    for param_type, rows in entries.rows.items():
        if rows:
            owned = [{"res_type": res_type, "res_id": res_id, **row} for row in rows]
            session.execute(insert(handler_for(param_type).table), owned)
    return entries

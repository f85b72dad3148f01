"""The repository: the only way to storage. Create, read, vread, update, delete, history, search.

Every method authorizes first (fhirserver.core.access), so no caller can reach a row
outside the principal's grant. Writes validate, run the type's write rules (the
WebMail rules for Communication), store the bytes (encrypted for Communication),
write the version row and the search index in the same transaction. The caller
owns the transaction: it commits or rolls back.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Table, and_, bindparam, exists, insert, select, true, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from fhirserver.config import Settings
from fhirserver.core import access, audit_log
from fhirserver.core.crypto import keyring_for
from fhirserver.core.errors import FhirError, not_found
from fhirserver.core.hooks import AFTER_WRITE, BEFORE_WRITE, WriteContext, WriteRule
from fhirserver.core.instants import instant, now_utc
from fhirserver.core.principal import Principal
from fhirserver.core.resource_types import ENCRYPTED_TYPES, NON_DELETABLE, NON_UPDATABLE
from fhirserver.core.stored import Stored
from fhirserver.core.validation import check_id, check_type, parse_json, validate_resource
from fhirserver.models import ResourceRow, ResourceVersionRow

__all__ = ["NON_DELETABLE", "NON_UPDATABLE", "Repository", "Stored", "WriteContext"]

# Writes go through SQLAlchemy Core on these tables: no ORM unit of work on the hot path.
RESOURCES: Table = ResourceRow.__table__  # type: ignore[assignment]
VERSIONS: Table = ResourceVersionRow.__table__  # type: ignore[assignment]


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


VERSION_RE = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "²"


def parse_etag(value: str) -> int:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not VERSION_RE.fullmatch(v):
        raise FhirError(400, "invalid", 'If-Match must be an ETag like W/"3"')
    return int(v)


@lru_cache(maxsize=access.CONDITION_CACHE_SIZE)
def _read_statement(
    shape: access.PrincipalShape, res_type: str, grant_live: ColumnElement[bool] | None, glass: bool
) -> Select[Any]:
    """The read of one ``res_type`` by one principal shape, built once per process: the id
    (``read_res_id``) and the pending grant's values are bound per execution.

    ``visible`` is the grant's conditions; ``grant_live`` the token's grant check, when the
    read does it (``PendingGrant``); ``glass_live`` whether any of the provider's
    break-glass grants is live, which the audit record needs.
    """
    conds = access.row_conditions(shape.principal, res_type, "r")
    visible = and_(*conds) if conds else true()
    columns: list[Any] = [
        ResourceRow.version_id,
        ResourceRow.last_updated,
        ResourceRow.deleted,
        ResourceRow.content,
        ResourceRow.key_id,
        visible.label("visible"),
    ]
    if grant_live is not None:
        columns.append(grant_live.label("grant_live"))
    if glass:
        columns.append(exists(access.break_glass_patients(shape.principal.user_id or "")).label("glass_live"))
    return select(*columns).where(ResourceRow.res_type == res_type, ResourceRow.res_id == bindparam("read_res_id"))


class Repository:
    def __init__(self, session: Session, settings: Settings, principal: Principal) -> None:
        self.session = session
        self.settings = settings
        self.principal = principal
        self.keys = keyring_for(settings.encryption_keys, settings.active_key_id)
        # The domain rules (WebMail) always run: every process that writes comes through here.
        # Loaded on first use rather than at import, so that importing the core stays cheap;
        # the rules import only fhirserver.core.hooks, never this module (no cycle).
        import fhirserver.rules  # noqa: F401

    # -- reading -----------------------------------------------------------------------
    def _decode(self, row: ResourceRow | ResourceVersionRow | Row[Any]) -> bytes:
        if row.content is None:
            return b""
        if row.key_id:
            return self.keys.decrypt(row.content, row.key_id, row.res_type, row.res_id, row.version_id)
        return row.content

    def to_stored(self, row: ResourceRow | ResourceVersionRow | Row[Any] | Stored) -> Stored:
        if isinstance(row, Stored):  # AuditEvents come from their own table already rendered
            return row
        return Stored(row.res_type, row.res_id, row.version_id, row.last_updated, self._decode(row), row.deleted)

    def _current(self, res_type: str, res_id: str, *, lock: bool = False) -> Row[Any] | None:
        """The current row as a Core row (no ORM object): ``lock`` takes it FOR UPDATE."""
        stmt = select(RESOURCES).where(RESOURCES.c.res_type == res_type, RESOURCES.c.res_id == res_id)
        if lock:
            stmt = stmt.with_for_update()
        self.session.flush()  # what the ORM's autoflush would do: this request's own writes count
        return self.session.connection().execute(stmt).first()

    def _forget(self, res_type: str, res_id: str) -> None:
        """Expire an ORM copy of a row that a Core statement just changed (a search in the
        same transaction may have loaded it), so that nothing reads the old version."""
        obj = self.session.identity_map.get(identity_key(ResourceRow, (res_type, res_id)))
        if obj is not None:
            self.session.expire(obj)

    def read_any(self, res_type: str, res_id: str) -> dict[str, Any] | None:
        """Read without authorization, for rules that must check other records (never returned to users)."""
        row = self._current(res_type, res_id)
        if row is None or row.deleted:
            return None
        return self.to_stored(row).json()

    def _visible_row(self, res_type: str, res_id: str, perm: str) -> Row[Any]:
        check_type(res_type)
        check_id(res_id)
        access.check_interaction(self.principal, res_type, perm)
        row = self._current(res_type, res_id)
        if row is None or not access.can_see(self.session, self.principal, res_type, res_id, perm):
            raise not_found(res_type, res_id)
        return row

    def _audit_event(self, res_id: str) -> Stored:
        """AuditEvents live in the audit table (fhirserver.core.audit_log): auditors read them there."""
        check_id(res_id)
        access.check_interaction(self.principal, "AuditEvent", "r")
        return audit_log.read(self.session, res_id)

    def read(self, res_type: str, res_id: str) -> Stored:
        """The current version, if the grant reaches it: one Core query, no ORM objects.

        The grant's conditions are a column of the same query (``visible``), so that one round
        trip both fetches the stored bytes and decides: absent or outside the grant is 404
        either way (nothing tells them apart), a deleted one inside it is 410. The bytes are
        served as stored (decrypted for Communication).

        When the token's grant is still to be checked (``Principal.pending``), the same query
        checks it too (a ``grant_live`` column; a provider's also says whether any of their
        break-glass grants is live, for the audit record): a revoked grant is 401 before
        anything else is decided.
        """
        if res_type in access.AUDIT_TYPES:
            return self._audit_event(res_id)
        check_type(res_type)
        check_id(res_id)
        p = self.principal
        access.check_interaction(p, res_type, "r")
        pending = p.pending
        glass = pending is not None and p.role == "provider" and res_type in access.PHI_TYPES
        stmt = _read_statement(access.PrincipalShape(p), res_type, pending.live if pending else None, glass)
        params = {"read_res_id": res_id, **(pending.params if pending else {})}
        self.session.flush()  # what the ORM's autoflush would do: this request's own writes count
        row = self.session.connection().execute(stmt, params).first()
        if pending is not None:
            if row is None:
                pending.settle(self.session)
            else:
                pending.record(row.grant_live)
            pending.break_glass_live = bool(row.glass_live) if row is not None and glass else None
        if row is None or not row.visible:
            raise not_found(res_type, res_id)
        if row.deleted:
            raise FhirError(410, "deleted", f"{res_type}/{res_id} was deleted")
        content = row.content or b""
        if row.content is not None and row.key_id:
            content = self.keys.decrypt(row.content, row.key_id, res_type, res_id, row.version_id)
        return Stored(res_type, res_id, row.version_id, row.last_updated, content, row.deleted)

    def vread(self, res_type: str, res_id: str, version_id: str) -> Stored:
        if res_type in access.AUDIT_TYPES:
            stored = self._audit_event(res_id)
            if version_id != "1":
                raise FhirError(404, "not-found", f"{res_type}/{res_id} has no version {version_id[:20]}")
            return stored
        self._visible_row(res_type, res_id, "r")
        if not re.fullmatch(r"[0-9]+", version_id):
            raise FhirError(400, "invalid", "The version id must be a number")
        # More digits than any stored version (and than the integer column holds) is simply absent.
        row = None if len(version_id) > 9 else self.session.get(ResourceVersionRow, (res_type, res_id, int(version_id)))
        if row is None:
            raise FhirError(404, "not-found", f"{res_type}/{res_id} has no version {version_id}")
        if row.deleted:
            raise FhirError(410, "deleted", f"Version {version_id} of {res_type}/{res_id} is a deletion")
        return self.to_stored(row)

    def history(self, res_type: str, res_id: str, since: datetime | None = None) -> list[Stored]:
        """The versions of one resource, newest first; ``since``: only those written at or after it."""
        if res_type in access.AUDIT_TYPES:
            return [self._audit_event(res_id)]  # append-only: one version
        self._visible_row(res_type, res_id, "r")
        conds = [ResourceVersionRow.res_type == res_type, ResourceVersionRow.res_id == res_id]
        if since is not None:
            conds.append(ResourceVersionRow.last_updated >= since)
        rows = self.session.execute(
            select(ResourceVersionRow).where(*conds).order_by(ResourceVersionRow.version_id.desc())
        ).scalars()
        return [self.to_stored(r) for r in rows]

    def search(self, res_type: str, params: list[tuple[str, str]]) -> Any:
        """Run a search confined to the grant; returns fhirserver.search.query.SearchPage."""
        from fhirserver.search.query import SearchPage, parse_search, run_search

        check_type(res_type)
        access.check_interaction(self.principal, res_type, "s")
        req = parse_search(res_type, params, cursor_key=cursor_key(self.settings), server_base=self.settings.fhir_base)
        if res_type in access.AUDIT_TYPES:
            rows, cursor = audit_log.search(self.session, req)
            return SearchPage(rows, cursor)  # type: ignore[arg-type]
        from fhirserver.core.hooks import SEARCH_PLANNERS

        restrict = access.row_conditions(self.principal, res_type, "s")
        for planner in SEARCH_PLANNERS.get(res_type, ()):
            page = planner(self.session, self.principal, req, restrict)
            if page is not None:
                return page
        return run_search(self.session, req, restrict)

    def visible_ids(self, res_type: str, ids: list[str]) -> set[str]:
        conds = access.row_conditions(self.principal, res_type)
        stmt = select(ResourceRow.res_id).where(ResourceRow.res_type == res_type, ResourceRow.res_id.in_(ids), *conds)
        return set(self.session.execute(stmt).scalars())

    # -- writing -----------------------------------------------------------------------
    def _context(self, res_type: str, res_id: str, data: dict[str, Any], old: dict[str, Any] | None) -> WriteContext:
        return WriteContext(self.session, self.settings, self.principal, res_type, res_id, data, old, self.read_any)

    def _store(self, ctx: WriteContext, version_id: int, method: str, *, new: bool) -> Stored:
        """Stamp, encrypt and store one version: Core statements, one executemany per index table.

        The body was validated once, before the rules ran; what the rules and this method
        add (subject, status, sent, category, id, meta) is the server's own, so it is not
        validated again. ``new``: no row exists yet, so there are no index rows to replace.
        """
        from fhirserver.search.indexing import write_index

        now = now_utc()
        data = ctx.data
        data["id"] = ctx.res_id
        meta = dict(data.get("meta") or {})
        meta["versionId"] = str(version_id)
        meta["lastUpdated"] = instant(now)
        data["meta"] = meta
        raw = dumps(data)
        content, key_id = raw, None
        if ctx.res_type in ENCRYPTED_TYPES:
            content, key_id = self.keys.encrypt(raw, ctx.res_type, ctx.res_id, version_id)
        values = {"version_id": version_id, "last_updated": now, "deleted": False, "content": content, "key_id": key_id}
        self._put_version(ctx.res_type, ctx.res_id, method, values, new=new)
        # Index from the plaintext dict: encrypted elements have no search parameter.
        ctx.index = write_index(
            self.session, ctx.res_type, ctx.res_id, data, server_base=self.settings.fhir_base, fresh=new
        )
        return Stored(ctx.res_type, ctx.res_id, version_id, now, raw)

    def _put_version(self, res_type: str, res_id: str, method: str, values: dict[str, Any], *, new: bool) -> None:
        """The current row (inserted when ``new``, else updated) and its version row: two Core statements."""
        conn = self.session.connection()
        if new:
            conn.execute(insert(RESOURCES), [{"res_type": res_type, "res_id": res_id, **values}])
        else:
            conn.execute(
                update(RESOURCES).where(RESOURCES.c.res_type == res_type, RESOURCES.c.res_id == res_id).values(**values)
            )
            self._forget(res_type, res_id)
        conn.execute(insert(VERSIONS), [{"res_type": res_type, "res_id": res_id, "method": method, **values}])

    def _run(self, rules: dict[str, list[WriteRule]], ctx: WriteContext) -> None:
        for rule in rules.get(ctx.res_type, []):
            rule(ctx)

    def create(self, res_type: str, body: bytes | str | dict[str, Any], *, res_id: str | None = None) -> Stored:
        check_type(res_type)
        access.check_interaction(self.principal, res_type, "c")
        data = parse_json(body)
        if data.get("resourceType") != res_type:
            raise FhirError(400, "invalid", f"resourceType must be {res_type}", ["resourceType"])
        new_id = res_id or str(uuid.uuid4())
        data.pop("id", None)
        ctx = self._context(res_type, new_id, data, None)
        ctx.created = True
        validate_resource(res_type, {**data, "id": new_id})
        self._run(BEFORE_WRITE, ctx)
        access.require_content_in_grant(self.principal, res_type, new_id, ctx.data, perm="c")
        ctx.stored = self._store(ctx, 1, "POST", new=True)
        self._run(AFTER_WRITE, ctx)
        return ctx.stored

    def conditional_create(
        self, res_type: str, body: bytes | str | dict[str, Any], criteria: str
    ) -> tuple[Stored, bool]:
        """Create unless ``criteria`` (``If-None-Exist``) match: (the resource, created?).

        No match inside the grant: the create. One: that resource, unchanged. Several: 412.
        The caller's own search decides, so matches outside the grant do not exist here.
        """
        from fhirserver.core import conditional

        check_type(res_type)
        access.check_interaction(self.principal, res_type, "c")
        pairs = conditional.parse_criteria(criteria)
        matches = self._conditional_matches(res_type, pairs, "If-None-Exist")
        if matches:
            return self.to_stored(matches[0]), False
        return self.create(res_type, body), True

    def _conditional_matches(self, res_type: str, pairs: list[tuple[str, str]], what: str) -> list[Any]:
        """At most two matches of the criteria inside the grant (two are enough to refuse), after
        the criteria's lock."""
        from fhirserver.core import conditional

        conditional.lock_criteria(self.session, res_type, pairs)
        rows = self.search(res_type, [*pairs, ("_count", "2")]).rows
        if len(rows) > 1:
            raise FhirError(412, "duplicate", f"The {what} criteria match more than one resource")
        return list(rows)

    def conditional_update(
        self, res_type: str, query: list[tuple[str, str]], body: bytes | str | dict[str, Any], if_match: str | None
    ) -> tuple[Stored, bool]:
        """``PUT [type]?criteria``: update the one match, or create when there is none.

        With a match, an ``id`` in the body must be the match's (400 otherwise). Without one,
        a body with an ``id`` is an update-as-create of that id (system principals only, as
        for a plain PUT) and a body without one a create.
        """
        from fhirserver.core import conditional

        check_type(res_type)
        access.check_interaction(self.principal, res_type, "u")
        pairs = conditional.check_criteria(query, "conditional update")
        data = parse_json(body)
        matches = self._conditional_matches(res_type, pairs, "conditional update")
        given = data.get("id")
        if matches:
            found = matches[0].res_id
            if given is not None and given != found:
                raise FhirError(400, "invalid", "The id in the body is not the id of the resource matched", ["id"])
            return self.update(res_type, found, {**data, "id": found}, if_match)
        if given is not None:
            return self.update(res_type, str(given), data, if_match)
        return self.create(res_type, data), True

    def conditional_delete(self, res_type: str, query: list[tuple[str, str]]) -> str | None:
        """``DELETE [type]?criteria``: delete the one match (its id), nothing when none matches."""
        from fhirserver.core import conditional

        check_type(res_type)
        access.check_interaction(self.principal, res_type, "d")
        if res_type in NON_DELETABLE:
            raise FhirError(405, "not-supported", NON_DELETABLE[res_type])
        pairs = conditional.check_criteria(query, "conditional delete")
        matches = self._conditional_matches(res_type, pairs, "conditional delete")
        if not matches:
            return None
        self.delete(res_type, matches[0].res_id)
        return str(matches[0].res_id)

    def update(
        self, res_type: str, res_id: str, body: bytes | str | dict[str, Any], if_match: str | None = None
    ) -> tuple[Stored, bool]:
        check_type(res_type)
        check_id(res_id)
        if res_type in NON_UPDATABLE:
            raise FhirError(405, "not-supported", NON_UPDATABLE[res_type])
        data = parse_json(body)
        if data.get("resourceType") != res_type:
            raise FhirError(400, "invalid", f"resourceType must be {res_type}", ["resourceType"])
        if data.get("id") != res_id:
            raise FhirError(400, "invalid", "The id in the body must match the id in the URL", ["id"])
        # A malformed If-Match is a 400 whether or not the resource exists.
        expected = parse_etag(if_match) if if_match is not None else None
        access.check_interaction(self.principal, res_type, "u")
        row = self._current(res_type, res_id, lock=True)
        if not self.principal.is_system:
            # A user never creates by PUT (update-as-create with a client-chosen id is for
            # system principals): an id they cannot see is 404 whether it exists or not.
            if row is None or not access.can_see(self.session, self.principal, res_type, res_id, "u"):
                raise not_found(res_type, res_id)
        elif row is None:
            if expected is not None:
                raise FhirError(412, "conflict", "If-Match given, but the resource does not exist")
            return self.create(res_type, data, res_id=res_id), True
        if expected is not None and expected != row.version_id:
            raise FhirError(412, "conflict", "The resource has changed since the version given in If-Match")
        old = None if row.deleted else self.to_stored(row).json()
        ctx = self._context(res_type, res_id, data, old)
        validate_resource(res_type, data)
        self._run(BEFORE_WRITE, ctx)
        access.require_content_in_grant(self.principal, res_type, res_id, ctx.data, perm="u")
        ctx.stored = self._store(ctx, row.version_id + 1, "PUT", new=False)
        self._run(AFTER_WRITE, ctx)
        return ctx.stored, False

    def patch(self, res_type: str, res_id: str, body: bytes | str, if_match: str | None = None) -> Stored:
        """Apply a JSON Patch to the current version, then store the result as an update would.

        The row is locked first and the patched version becomes the update's ``If-Match``,
        so no other write can slip in between the version patched and the one stored.
        """
        from fhirserver.core import patch

        check_type(res_type)
        check_id(res_id)
        if res_type in NON_UPDATABLE:
            raise FhirError(405, "not-supported", NON_UPDATABLE[res_type])
        expected = parse_etag(if_match) if if_match is not None else None
        access.check_interaction(self.principal, res_type, "u")
        ops = patch.parse(body)
        row = self._current(res_type, res_id, lock=True)
        if row is None or not access.can_see(self.session, self.principal, res_type, res_id, "u"):
            raise not_found(res_type, res_id)
        if row.deleted:
            raise FhirError(410, "deleted", f"{res_type}/{res_id} is deleted")
        if expected is not None and expected != row.version_id:
            raise FhirError(412, "conflict", "The resource has changed since the version given in If-Match")
        patched = patch.apply(self.to_stored(row).json(), ops)
        stored, _ = self.update(res_type, res_id, dumps(patched), f'W/"{row.version_id}"')
        return stored

    def delete(self, res_type: str, res_id: str) -> None:
        check_type(res_type)
        check_id(res_id)
        access.check_interaction(self.principal, res_type, "d")
        if res_type in NON_DELETABLE:
            raise FhirError(405, "not-supported", NON_DELETABLE[res_type])
        row = self._current(res_type, res_id, lock=True)
        if row is None or not access.can_see(self.session, self.principal, res_type, res_id, "d"):
            raise not_found(res_type, res_id)
        if row.deleted:
            return
        values = {"version_id": row.version_id + 1, "last_updated": now_utc(), "deleted": True}
        self._put_version(res_type, res_id, "DELETE", {**values, "content": None, "key_id": None}, new=False)
        # The index rows stay (search skips deleted rows): they still tell who may see the
        # deletion, so a read answers 410 inside the grant and 404 outside it.


def cursor_key(settings: Settings) -> bytes:
    """A key for search cursors, derived from the app secret (never the data keys)."""
    from fhirserver.core.crypto import derive_key

    return derive_key(settings.secret_key, b"fhirserver search cursor")

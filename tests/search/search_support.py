"""Helpers for the search DB tests: store resources straight into the tables.

Every test works inside the ``db_session`` transaction, which is rolled back at the
end, and gives its resources ids under a fresh prefix so that ``mine()`` (a restrict
condition) confines a search to the test's own rows whatever else the database holds.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from fhirserver.models import ResourceRow
from fhirserver.search.indexing import write_index
from fhirserver.search.query import SearchPage, parse_search, run_search

BASE = "https://fhir.example/fhir"


@dataclass
class Store:
    session: Session
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}-")
    key: bytes = field(default_factory=lambda: os.urandom(32))
    clock: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    ids: dict[str, str] = field(default_factory=dict)

    def add(
        self,
        res_type: str,
        name: str,
        body: dict[str, Any],
        *,
        deleted: bool = False,
        last_updated: datetime | None = None,
    ) -> str:
        """Insert one current resource row and its index rows; returns its id."""
        res_id = self.prefix + name
        self.clock += timedelta(seconds=1)
        data = {"resourceType": res_type, "id": res_id, **body}
        row = ResourceRow(
            res_type=res_type,
            res_id=res_id,
            version_id=1,
            last_updated=last_updated or self.clock,
            deleted=deleted,
            content=json.dumps(data).encode(),
            key_id=None,
        )
        self.session.add(row)
        self.session.flush()
        write_index(self.session, res_type, res_id, data, server_base=BASE)
        self.ids[name] = res_id
        return res_id

    def mine(self) -> list[ColumnElement[bool]]:
        return [ResourceRow.res_id.startswith(self.prefix, autoescape=True)]

    def page(self, res_type: str, *params: tuple[str, str], restrict: list[Any] | None = None, **kw: Any) -> SearchPage:
        req = parse_search(res_type, list(params), cursor_key=self.key, server_base=BASE, **kw)
        return run_search(self.session, req, self.mine() + (restrict or []))

    def names(self, res_type: str, *params: tuple[str, str], **kw: Any) -> list[str]:
        """The test-local names of the first page's results, in order."""
        return [r.res_id[len(self.prefix) :] for r in self.page(res_type, *params, **kw).rows]

    def found(self, res_type: str, *params: tuple[str, str], **kw: Any) -> set[str]:
        return set(self.names(res_type, *params, ("_count", "100"), **kw))

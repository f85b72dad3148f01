"""Following a search's next cursors to the end, on the repository (planned) or the generic search:
what the planner tests (mailbox inbox, chart) compare."""

from __future__ import annotations

from typing import Any

from fhirserver.config import Settings
from fhirserver.core import access
from fhirserver.core.principal import Principal
from fhirserver.core.repository import Repository, cursor_key
from fhirserver.search.query import parse_search, run_search


def all_pages(
    session: Any, settings: Settings, who: Principal, params: list[tuple[str, str]], *, generic: bool
) -> list[list[str]]:
    """Every page's Communication ids, in order."""
    pages: list[list[str]] = []
    current = params
    while True:
        if generic:
            req = parse_search(
                "Communication", current, cursor_key=cursor_key(settings), server_base=settings.fhir_base
            )
            page = run_search(session, req, access.row_conditions(who, "Communication", "s"))
        else:
            page = Repository(session, settings, who).search("Communication", current)
        pages.append([r.res_id for r in page.rows])
        assert len(pages) <= 50, "paging does not end"
        if not page.next_cursor:
            return pages
        current = [("_cursor", page.next_cursor)]

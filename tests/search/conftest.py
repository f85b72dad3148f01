"""Fixtures of the search tests (helpers live in search_support.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from tests.search.search_support import Store


@pytest.fixture()
def store(db_session: Session) -> Store:
    return Store(db_session)

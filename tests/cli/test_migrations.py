"""The schema changes only through migrations: the migrated database matches the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import fhirserver.models  # noqa: F401  (every package's tables hang off the one Base.metadata)
import smart_auth.models  # noqa: F401
from fhirserver.db import Base, make_engine


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    """The run's database was built by `alembic upgrade head` alone (tests/support.py)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], "models and migrations differ; add the change to migrations/versions"

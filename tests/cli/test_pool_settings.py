"""Connection pools fit gunicorn's threads, and PostgreSQL plans every statement with its values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhirserver.config import Settings, SettingsError, load_settings
from fhirserver.db import engine_options, pool_size_for
from tests.support import test_env

PG_URL = "postgresql+psycopg://u@127.0.0.1:5432/db"


def test_pool_fits_the_default_serve_threads_with_the_audit_writer_and_a_spare() -> None:
    options = engine_options(PG_URL)
    assert options["pool_size"] == pool_size_for(8) == 10
    assert options["max_overflow"] == 2
    assert options["pool_pre_ping"] is False  # install_idle_ping instead: no round trip per checkout
    assert options["pool_recycle"] > 0


def test_psycopg_never_prepares_statements_so_no_generic_plans() -> None:
    assert engine_options(PG_URL)["connect_args"] == {"prepare_threshold": None}
    assert "connect_args" not in engine_options("postgresql+psycopg2://u@h/db")  # prepares nothing


def test_pool_sizes_come_from_the_environment(tmp_path: Path) -> None:
    env = test_env(tmp_path, PG_URL, 8080, DB_POOL_SIZE="18", DB_MAX_OVERFLOW="0")
    settings = load_settings(env)
    assert (settings.db_pool_size, settings.db_max_overflow) == (18, 0)
    with pytest.raises(SettingsError, match="DB_POOL_SIZE"):
        load_settings(test_env(tmp_path, PG_URL, 8080, DB_POOL_SIZE="0"))


def test_the_app_engine_uses_the_configured_pool(settings: Settings) -> None:
    from fhirserver.app import create_app
    from fhirserver.extensions import db

    if settings.is_sqlite:
        pytest.skip("SQLite has no connection pool size to configure")
    app = create_app(settings.with_(db_pool_size=13, db_max_overflow=1))
    with app.app_context():
        pool: Any = db.engine.pool
        assert (pool.size(), pool._max_overflow) == (13, 1)
        with db.engine.connect() as conn:
            assert conn.connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]


def _backend_pid(conn: Any) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _kill_backend(settings: Settings, pid: int) -> None:
    from fhirserver.db import make_engine

    killer = make_engine(settings.database_url)
    try:
        with killer.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            conn.commit()
    finally:
        killer.dispose()


@pytest.mark.parametrize("idle", [True, False])
def test_a_connection_that_died_while_idle_is_pinged_and_replaced(settings: Settings, idle: bool) -> None:
    """The idle ping replaces a dead pooled connection; a busy one is handed out unpinged."""
    import time

    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    from fhirserver.db import engine_options, install_idle_ping

    if settings.is_sqlite:
        pytest.skip("SQLite connections cannot die on a server")
    engine = create_engine(settings.database_url, **{**engine_options(settings.database_url), "pool_size": 1})
    install_idle_ping(engine, after=0.3)
    try:
        with engine.connect() as conn:
            first = _backend_pid(conn)
        _kill_backend(settings, first)
        if idle:
            time.sleep(0.4)
            with engine.connect() as conn:
                assert _backend_pid(conn) != first  # pinged, found dead, replaced before use
        else:
            # Checked out again at once: not pinged, so the dead connection fails its one use.
            with pytest.raises(OperationalError), engine.connect() as conn:
                _backend_pid(conn)
            with engine.connect() as conn:  # and the pool has replaced it
                assert _backend_pid(conn) != first
    finally:
        engine.dispose()

"""The one database: declarative base, engine options, and SQLite locking behaviour.

The FHIR core takes a plain SQLAlchemy ``Session``; Flask-SQLAlchemy supplies one
per request in the web app, and the worker and CLI open their own with
:func:`make_sessionmaker`. Every table of every package (FHIR, accounts and tokens,
outbox) hangs off :data:`Base.metadata`, and Alembic migrates exactly that.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


SQLITE_BUSY_TIMEOUT_MS = 30_000


def engine_options(url: str) -> dict[str, Any]:
    """Options for ``create_engine`` (also given to Flask-SQLAlchemy)."""
    if url.startswith("sqlite"):
        # Our own BEGIN (see configure_sqlite) needs pysqlite's implicit transactions off.
        return {"connect_args": {"check_same_thread": False, "isolation_level": None, "timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10}


def configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for every transaction.

    A deferred transaction that reads and then writes cannot wait for the lock: SQLite
    fails it at once with "database is locked" when another writer got in between.
    Taking the write lock up front makes every transaction wait its turn instead
    (for up to the busy timeout). Readers in WAL mode never block writers, and
    SQLite is the embedded default, so serialising transactions costs little.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    engine = create_engine(url, **engine_options(url))
    configure_sqlite(engine)
    return engine


def make_sessionmaker(url: str) -> sessionmaker[Session]:
    """Sessions for processes outside a Flask request (worker, CLI, benchmarks)."""
    return sessionmaker(bind=make_engine(url), expire_on_commit=False)

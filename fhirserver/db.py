"""The one database: declarative base, engine options, and SQLite locking behaviour.

The FHIR core takes a plain SQLAlchemy ``Session``; Flask-SQLAlchemy supplies one
per request in the web app, and the worker and CLI open their own with
:func:`make_sessionmaker`. Every table of every package (FHIR, accounts and tokens,
outbox) hangs off :data:`Base.metadata`, and Alembic migrates exactly that.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
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


# Connections a web process may need beyond one per request thread: the audit batch writer
# holds one, and one spare covers a thread that opens a second session (a CLI-style helper).
POOL_SPARE = 2
DEFAULT_THREADS = 8  # ``fhirserver serve --threads``' default
DEFAULT_POOL_SIZE = DEFAULT_THREADS + POOL_SPARE
# Overflow is for the unforeseen: a pool that keeps overflowing is too small, and a large
# overflow times the workers would only move the queue into PostgreSQL.
DEFAULT_MAX_OVERFLOW = 2
# Older than this, a pooled connection is closed at checkout (a proxy or firewall in front of
# PostgreSQL may drop idle connections silently; the idle ping catches the rest).
POOL_RECYCLE_SECONDS = 1800
# A connection that sat in the pool longer than this is pinged before it is handed out
# (install_idle_ping); one in steady use is not.
IDLE_PING_SECONDS = 5.0


def pool_size_for(threads: int) -> int:
    """The pool one web process needs: a connection per request thread, plus the spares."""
    return threads + POOL_SPARE


def engine_options(
    url: str, *, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW
) -> dict[str, Any]:
    """Options for ``create_engine`` (also given to Flask-SQLAlchemy).

    PostgreSQL through psycopg 3 gets ``prepare_threshold=None``: psycopg would otherwise
    prepare a statement on the server after its 5th execution on a connection, and
    PostgreSQL may then run it with a *generic plan*, chosen without the parameter values.
    Our searches need the values (a selective name against a provider's thousands of
    patients: 0.26 ms with the custom plan, 41 ms with the generic one, see
    docs/deploy.md "Workers, threads and connections" and tests/search/test_plans_at_scale.py).
    Unprepared, every execution is planned with its values; planning our queries costs
    well under a millisecond. This is chosen over ``plan_cache_mode=force_custom_plan``
    (which keeps preparing and replans anyway, saving only the parse) because it needs no
    server setting in the startup packet, so it also works through PgBouncer in
    transaction mode, and it holds no server memory per statement and connection.
    """
    if url.startswith("sqlite"):
        # Our own BEGIN (see configure_sqlite) needs pysqlite's implicit transactions off.
        return {"connect_args": {"check_same_thread": False, "isolation_level": None, "timeout": 30}}
    options: dict[str, Any] = {
        # Not SQLAlchemy's ping on every checkout: a round trip per request, 16% of a read's
        # time under load (py-spy). install_idle_ping pings only connections that sat idle.
        "pool_pre_ping": False,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_recycle": POOL_RECYCLE_SECONDS,
        "pool_timeout": 30,
    }
    if make_url(url).get_driver_name() == "psycopg":
        options["connect_args"] = {"prepare_threshold": None}
    return options


def install_idle_ping(engine: Engine, *, after: float = IDLE_PING_SECONDS) -> None:
    """Ping a pooled connection at checkout only if it sat idle for ``after`` seconds or more.

    A connection returned a moment ago is as good as the last statement it ran, and under
    load every connection is; a restart or a proxy that drops idle connections leaves
    connections that have been idle, and those are pinged and, when dead, replaced (raising
    DisconnectionError in a checkout listener makes the pool retry with a new one). A
    connection that dies while in steady use fails the one request using it (500), and
    SQLAlchemy then invalidates the pool's older connections as it does for any disconnect.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < after:
            return
        try:
            ok = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError("a pooled connection failed its ping") from exc
        if not ok:
            raise DisconnectionError("a pooled connection failed its ping")


def configure_engine(engine: Engine) -> None:
    """What every engine of ours needs beyond its options: the idle ping (PostgreSQL) or the
    SQLite settings (:func:`configure_sqlite`)."""
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine)
    else:
        install_idle_ping(engine)


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
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # without_transaction: each statement on its own, no lock held
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def without_transaction(session: Session) -> None:
    """Run this session's statements in autocommit mode, from its first one on.

    For a request whose work is one SELECT (a plain read: the grant check is folded into
    it), BEGIN and COMMIT are two more round trips that protect nothing; on SQLite the
    ``BEGIN IMMEDIATE`` of configure_sqlite would also queue the read behind every writer.
    The pool puts the connection back in its usual mode when it is returned.
    """
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def make_engine(url: str, **pool: int) -> Engine:
    """An engine with the app's options; ``pool`` overrides ``pool_size`` / ``max_overflow``."""
    engine = create_engine(url, **engine_options(url, **pool))
    configure_engine(engine)
    return engine


def make_sessionmaker(url: str) -> sessionmaker[Session]:
    """Sessions for processes outside a Flask request (worker, CLI, benchmarks)."""
    return sessionmaker(bind=make_engine(url), expire_on_commit=False)

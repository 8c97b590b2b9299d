"""Engines: small pools, and SQLite set up for several processes (WAL, busy timeout)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

#: Execution option for read-only work: on SQLite it opens a deferred transaction
#: instead of taking the write lock up front.
READ_ONLY = {"raypipe_read_only": True}
#: Seconds to wait for PostgreSQL to accept a connection (unless the URL sets
#: ``connect_timeout``): a host that stops answering fails dispatcher rounds and /health
#: quickly instead of after the operating system's TCP timeout (minutes).
CONNECT_TIMEOUT_S = 10


def unavailable(exc: BaseException) -> bool:
    """Whether the database could not take a statement right now (down, restarting, its
    connection lost, the pool exhausted, locked), as opposed to a statement that is wrong:
    the first is answered 503 by the API and tried again by the runtime's writers."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.TimeoutError):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def read_only(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite it takes no write lock."""
    return engine.connect().execution_options(**READ_ONLY)


def upsert(bind: Engine | Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` in the dialect of ``bind``, which takes ``ON CONFLICT``
    clauses (both dialects spell them alike)."""
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def create_engine(url: str, pool_size: int = 5, wait_for_flush: bool = True) -> Engine:
    """An engine for ``url``; created per process because engines cannot be pickled into Ray.

    ``wait_for_flush=False`` lets PostgreSQL acknowledge commits before their WAL
    reaches disk. The dispatcher uses it: a crash can only roll its recent claims
    and outcomes back to an earlier consistent state, which lease expiry then
    re-runs (delivery is at-least-once anyway). Submissions always wait.
    """
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    options: dict[str, object] = {}
    if "connect_timeout" not in sa.engine.make_url(url).query:
        options["connect_timeout"] = CONNECT_TIMEOUT_S
    if not wait_for_flush:
        options["options"] = "-c synchronous_commit=off"
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=options,
    )


def _sqlite_engine(url: str) -> Engine:
    database = sa.engine.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: object, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the lock up front, so two writers never deadlock upgrading a read lock.
        read_only = connection.get_execution_options().get("raypipe_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine

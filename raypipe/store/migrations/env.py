"""Alembic environment: runs raypipe's migrations on the connection it is handed."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from raypipe.store.engine import create_engine
from raypipe.store.tables import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url")
        if url is None:
            raise SystemExit("no database to migrate: use `raypipe migrate`")
        engine = create_engine(url)
        with engine.begin() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("raypipe migrations run online only: use `raypipe migrate`")
run_migrations_online()

"""Schema versions: upgrade with Alembic, and refuse to run on a schema that is behind.

Every process that uses the database opens it here: :func:`open_current` for the life of
a process (the API, the in-cluster client), :func:`current_database` for one command or
job. Long-running actors (the dispatcher, the webhook sender) instead wait, checking with
:func:`check` each round, until someone migrates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from raypipe.exceptions import SchemaOutOfDate
from raypipe.store.engine import create_engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def check(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` with the fixing command unless the schema is current."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = "empty" if current is None else f"at revision {current}"
        raise SchemaOutOfDate(
            f"database schema is {where}, raypipe needs {head}: run `raypipe migrate`"
            " (with the same RAYPIPE_DATABASE_URL)"
        )


def open_current(url: str, **options: Any) -> Engine:
    """An engine on ``url`` (``options`` as :func:`create_engine` takes them), or
    :class:`SchemaOutOfDate` when its schema is not current."""
    engine = create_engine(url, **options)
    try:
        check(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def current_database(url: str) -> Iterator[Engine]:
    """:func:`open_current` with one connection, disposed on exit: for a command or a job."""
    engine = open_current(url, pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()

"""Groups of ``raypipe`` subcommands, each a module named after what it manages, and what
they share: the ``--json`` flag, and a checked database connection without Ray."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from sqlalchemy.engine import Engine

from raypipe.config import Settings
from raypipe.store import create_engine
from raypipe.store import schema as store_schema

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    """An engine on the configured database, whose schema is current (else a one-line error)."""
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        store_schema.check(engine)
        yield engine
    finally:
        engine.dispose()


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))

"""Groups of ``raypipe`` subcommands, each a module named after what it manages, and what
they share: the ``--json`` flag, and a checked database connection without Ray."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Annotated, Any

import typer
from sqlalchemy.engine import Engine

from raypipe.config import Settings
from raypipe.store import schema_version

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def database(settings: Settings) -> AbstractContextManager[Engine]:
    """The configured database for one command, whose schema is current (else a one-line
    error naming the fix); every subcommand opens it this way."""
    return schema_version.current_database(settings.database_url)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))

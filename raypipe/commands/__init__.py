"""Groups of ``raypipe`` subcommands, each a module named after what it manages, and what
they share: the ``--json`` flag, one-line failures and their exit codes, a checked
database connection without Ray, and joining Ray when it runs."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Annotated, Any, NoReturn

import typer
from sqlalchemy.engine import Engine

from raypipe.client import API_KEY_ENV, URL_ENV
from raypipe.config import Settings
from raypipe.exceptions import RaypipeError
from raypipe.runtime import actors
from raypipe.store import schema_version

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
#: The commands that read or change jobs work through a deployment's API with these.
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=URL_ENV,
        help="A deployment's API to work through, as --key's tenant (default: the database).",
    ),
]
KeyOption = Annotated[
    str | None, typer.Option("--key", envvar=API_KEY_ENV, help="The API key for --url.")
]

#: Exit codes: 1 for failures (a failed job, raypipe not running), 2 for bad input.
EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """End the command with one line on stderr."""
    typer.echo(f"raypipe: {message}", err=True)
    raise typer.Exit(code)


def join_ray(settings: Settings) -> bool:
    """Join Ray if it runs; returns whether this process is connected now."""
    try:
        actors.init_ray(settings)
    except RaypipeError:
        return False
    return True


def database(settings: Settings) -> AbstractContextManager[Engine]:
    """The configured database for one command, whose schema is current (else a one-line
    error naming the fix); every subcommand opens it this way."""
    return schema_version.current_database(settings.database_url)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))

"""The ``raypipe`` command: start and stop the local stack, submit and inspect jobs.

Every failure ends the same way: one line on stderr starting with ``raypipe:`` and a
non-zero exit code (2 for bad input, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer

from raypipe import registry
from raypipe.commands import (
    EXIT_FAILURE,
    EXIT_USAGE,
    JsonFlag,
    database,
    jobs,
    join_ray,
    maintenance,
    queues,
    schedules,
    stats,
    tenants,
    webhooks,
)
from raypipe.config import Settings, get_settings
from raypipe.exceptions import InvalidInput, NotRunning, RaypipeError
from raypipe.runtime import actors, head, terminal
from raypipe.store import create_engine, schema_version
from raypipe.store.access import AccessStore
from raypipe.submission import DEFAULT_TENANT

app = typer.Typer(
    help="Durable background jobs on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)

#: Click's exceptions, wherever this typer keeps click (typer >= 0.2x vendors it).
_click_errors = importlib.import_module(typer.BadParameter.__module__)

#: Seconds `down` gives each group of Ray processes to exit after SIGTERM.
STOP_GRACE_S = 10.0


# -- commands ----------------------------------------------------------------------------


@app.command()
def up(
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for a new local Ray head.")] = None,
    api: Annotated[bool, typer.Option(help="Also serve the HTTP API on Ray Serve.")] = True,
) -> None:
    """Start a local Ray head if none runs, migrate the database, start the dispatcher and
    the HTTP API."""
    overrides: dict[str, Any] = {"ray_num_cpus": num_cpus} if num_cpus is not None else {}
    settings = get_settings(**overrides)
    migrate_database(settings)
    started = head.start_head(settings)
    if not head.ray_running(settings):
        hint = f": `up` started one on port {settings.ray_port}" if started else ""
        raise NotRunning(f"no Ray answers at {settings.ray_address!r}{hint}")
    actors.init_ray(settings, owner=True)
    terminal.quiet()  # Serve's and the actors' INFO lines stay in Ray's log files
    actors.start_actors(settings)
    where = "started a local Ray head" if started else f"joined Ray at {settings.ray_address}"
    typer.echo(f"raypipe is up: {where}; database {_safe_url(settings)}")
    typer.echo(_job_types(settings))
    if api:
        from raypipe.api.deployment import deploy

        deploy(settings)
        typer.echo(f"API on http://{settings.api.host}:{settings.api.port} (docs at /docs)")
        _first_key(settings)


def _job_types(settings: Settings) -> str:
    """Which job types run here, and which built-ins wait for their extra."""
    ready = ", ".join(sorted(registry.load(settings.processor_modules)))
    missing = registry.not_installed()
    extras = sorted(set(missing.values()))
    if not extras:
        return f"job types: {ready}"
    names = ", ".join(f"{t} (raypipe[{e}])" for t, e in sorted(missing.items()))
    wanted = ",".join(extras)
    return f"job types: {ready}; not installed: {names}: pip install 'raypipe[{wanted}]'"


def _first_key(settings: Settings) -> None:
    """On a database without keys, make an admin key for the default tenant and show it
    once (also kept, readable only by this user, in the data folder)."""
    with database(settings) as engine:
        access = AccessStore(engine)
        if access.count_keys():
            return
        secret, _key = access.create_key(DEFAULT_TENANT, name="first key", admin=True)
    path = settings.data_dir / "api-key"
    path.unlink(missing_ok=True)
    # Created readable by this user only: a chmod after writing leaves a window in which
    # the secret sits under the umask's mode.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    typer.echo(f"API key (admin, tenant {DEFAULT_TENANT!r}; also in {path}): {secret}")


@app.command()
def down(
    now: Annotated[
        bool,
        typer.Option(
            "--now", help="Do not drain: running attempts die and run again after their lease."
        ),
    ] = False,
    grace: Annotated[
        float | None,
        typer.Option(min=0, help="Seconds running attempts may take (default: drain_grace_s)."),
    ] = None,
) -> None:
    """Stop the dispatcher and progress actor, and the local Ray head if `up` started it.

    First a drain: nothing new starts, running attempts may finish within the grace, and
    the rest are queued again without counting against their max_attempts."""
    settings = get_settings()
    stopped: list[str] = []
    if join_ray(settings):
        import ray

        from raypipe.api.deployment import undeploy

        terminal.quiet()
        drain = None if now else (settings.engine.drain_grace_s if grace is None else grace)
        stopped = actors.stop_actors(settings, drain_grace_s=drain)
        if undeploy():
            stopped.append("the API")
        ray.shutdown()
    elif not head.started_here(settings):
        typer.echo("raypipe is not running")
        return
    stopped_ray = head.stop_head(settings)
    typer.echo(
        f"stopped {', '.join(stopped) or 'nothing'}" + ("; stopped Ray" if stopped_ray else "")
    )


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = get_settings()
    revision = migrate_database(settings)
    typer.echo(f"database {_safe_url(settings)} is at revision {revision}")


def migrate_database(settings: Settings) -> str:
    engine = create_engine(settings.database_url)
    try:
        schema_version.upgrade(engine)
        return schema_version.current_revision(engine) or "base"
    finally:
        engine.dispose()


for command in (
    *jobs.COMMANDS,
    stats.stats,
    maintenance.prune,
    maintenance.orphans,
    maintenance.stuck,
):
    app.command()(command)

app.add_typer(queues.app, name="queues")
app.add_typer(tenants.app, name="tenants")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(schedules.app, name="schedules")

keys = typer.Typer(help="API keys: each belongs to a tenant; admin keys see every tenant.")
app.add_typer(keys, name="keys")


@contextlib.contextmanager
def _access() -> Iterator[AccessStore]:
    with database(get_settings()) as engine:
        yield AccessStore(engine)


@keys.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="See every tenant.")] = False,
) -> None:
    """Create a key and print it; it is shown only this once."""
    with _access() as access:
        secret, key = access.create_key(tenant, name=name, admin=admin)
    typer.echo(secret)
    typer.echo(
        f"key {key.prefix}… for tenant {key.tenant!r}" + (" (admin)" if admin else ""), err=True
    )


@keys.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option()] = None, as_json: JsonFlag = False
) -> None:
    """List keys (never their secrets)."""
    with _access() as access:
        found = access.list_keys(tenant)
    rows = [
        {
            "id": k.id,
            "prefix": k.prefix,
            "tenant": k.tenant,
            "name": k.name,
            "admin": k.admin,
            "revoked": k.revoked_at is not None,
        }
        for k in found
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        flags = " admin" * bool(row["admin"]) + " revoked" * bool(row["revoked"])
        typer.echo(f"{row['prefix']}…  {row['tenant']:<16} {row['name']}{flags}")


@keys.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or prefix.")]) -> None:
    """Revoke a key: requests with it are refused from then on."""
    with _access() as access:
        revoked = access.revoke_key(key)
    typer.echo(f"revoked {revoked.prefix}… of tenant {revoked.tenant!r}")


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _click_error(exc: Any) -> int:
    """Print a click error (bad option, missing argument, unknown command) as one line."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        help_text = exc.format_message()  # typer's rich help prints itself and returns ""
        if help_text.strip():
            typer.echo(help_text)
        return int(exc.exit_code)
    message = f"raypipe: {_one_line(exc.format_message())}"
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, _click_errors.UsageError):
        message += f" (see `{ctx.command_path if ctx else 'raypipe'} --help`)"
    typer.echo(message, err=True)
    return int(exc.exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one-line errors on stderr and a non-zero exit code, never a traceback."""
    import sqlalchemy.exc
    from pydantic import ValidationError

    try:
        code = app(args=argv, prog_name="raypipe", standalone_mode=False)
    except _click_errors.ClickException as exc:
        code = _click_error(exc)
    except typer.Abort:
        typer.echo("raypipe: aborted", err=True)
        code = 130
    except InvalidInput as exc:
        typer.echo(f"raypipe: {_one_line(exc.message)}", err=True)
        code = EXIT_USAGE
    except RaypipeError as exc:
        typer.echo(f"raypipe: {_one_line(exc.message)}", err=True)
        code = EXIT_FAILURE
    except ValidationError as exc:  # settings from RAYPIPE_* variables
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        typer.echo(f"raypipe: invalid setting {where}: {first['msg']}", err=True)
        code = EXIT_USAGE
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = _one_line(str(getattr(exc, "orig", None) or exc))
        typer.echo(f"raypipe: database error: {reason}", err=True)
        code = EXIT_FAILURE
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

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
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from raypipe.commands import database, maintenance, schedules, stats, webhooks
from raypipe.config import Settings, get_settings
from raypipe.direct import DirectClient
from raypipe.exceptions import InvalidInput, NotRunning, RaypipeError
from raypipe.jobs import JobRecord, JobStatus
from raypipe.runtime import actors, head
from raypipe.runtime.names import DISPATCHER_ACTOR, find_actor
from raypipe.store import create_engine, schema_version
from raypipe.store.access import AccessStore
from raypipe.submission import DEFAULT_TENANT

app = typer.Typer(
    help="Durable background jobs on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Click's exceptions, wherever this typer keeps click (typer >= 0.2x vendors it).
_click_errors = importlib.import_module(typer.BadParameter.__module__)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

#: Exit codes: 1 for failures (a failed job, raypipe not running), 2 for bad input.
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Seconds `down` gives each group of Ray processes to exit after SIGTERM.
STOP_GRACE_S = 10.0


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"raypipe: {message}", err=True)
    raise typer.Exit(code)


def _join_ray(settings: Settings) -> bool:
    """Join Ray if it runs; returns whether this process is connected now."""
    try:
        actors.init_ray(settings)
    except RaypipeError:
        return False
    return True


def _wake(settings: Settings, client: DirectClient) -> bool:
    """Tell the dispatcher there is news, if Ray runs (it polls the database anyway).

    Returns whether this process joined Ray.
    """
    if not _join_ray(settings):
        return False
    import ray

    dispatcher = find_actor(settings, DISPATCHER_ACTOR)
    if dispatcher is not None:
        # Wait for delivery: a fire-and-forget call may die with this short-lived process.
        with contextlib.suppress(Exception):
            ray.get(dispatcher.wake.remote(), timeout=5)
    return True


def _print_job(job: JobRecord, as_json: bool, attempts: list[dict[str, Any]] | None = None) -> None:
    data = job.to_dict()
    if attempts is not None:
        data["attempts"] = attempts
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key == "attempts":
            for attempt in value:
                error = attempt["error"]
                why = f" {error['type']}: {error['message']}" if error else ""
                typer.echo(f"  attempt {attempt['attempt']}: {attempt['status']}{why}")
        elif value not in (None, [], {}):
            typer.echo(
                f"{key:>12}: {json.dumps(value) if isinstance(value, dict | list) else value}"
            )


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
    actors.init_ray(settings)
    actors.start_actors(settings)
    where = "started a local Ray head" if started else f"joined Ray at {settings.ray_address}"
    typer.echo(f"raypipe is up: {where}; database {_safe_url(settings)}")
    if api:
        from raypipe.api.deployment import deploy

        deploy(settings)
        typer.echo(f"API on http://{settings.api_host}:{settings.api_port} (docs at /docs)")
        _first_key(settings)


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
def down() -> None:
    """Stop the dispatcher and progress actor, and the local Ray head if `up` started it."""
    settings = get_settings()
    stopped: list[str] = []
    if _join_ray(settings):
        import ray

        from raypipe.api.deployment import undeploy

        stopped = actors.stop_actors(settings)
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


@app.command()
def submit(
    type: Annotated[str, typer.Argument(help="Job type, e.g. sleep.")],
    payload: Annotated[str, typer.Option(help="The payload as JSON.")] = "{}",
    queue: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[int | None, typer.Option()] = None,
    delay: Annotated[float, typer.Option(help="Seconds before it may run.")] = 0.0,
    max_attempts: Annotated[int | None, typer.Option()] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per attempt.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    webhook_url: Annotated[
        str | None, typer.Option(help="POSTed a signed event when the job ends.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    wait_timeout: Annotated[float | None, typer.Option(help="Give up waiting after s.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job; with --wait, follow it and exit non-zero unless it completes."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)
    settings = get_settings()
    client = DirectClient(settings)
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "delay_s": delay,
        "max_attempts": max_attempts,
        "timeout_s": timeout,
        "tags": tag or [],
        "idempotency_key": idempotency_key,
        "webhook_url": webhook_url,
    }
    # Validated and written before joining Ray: bad input fails fast and writes nothing.
    handle = client.submit_many([{"type": type, "payload": body, **options}])[0]
    # A delayed job needs no wake-up (joining Ray takes seconds): it is found when due.
    joined = _wake(settings, client) if wait or delay <= 0 else False
    if not wait:
        _print_job(handle.refresh(), as_json) if as_json else typer.echo(handle.id)
        return
    if not joined or find_actor(settings, DISPATCHER_ACTOR) is None:
        _fail(f"job {handle.id} is queued, but no dispatcher runs: start one with `raypipe up`")
    try:
        job = handle.wait(wait_timeout, progress=not as_json and sys.stderr.isatty())
    except TimeoutError as exc:
        _fail(f"{exc}; follow it with `raypipe show {handle.id}`")
    _print_job(job, as_json)
    if job.status is not JobStatus.COMPLETED:
        reason = f": {job.error.type}: {job.error.message}" if job.error else ""
        _fail(f"job {job.id} {job.status.value}{reason}")


@app.command()
def jobs(
    status: Annotated[JobStatus | None, typer.Option()] = None,
    type: Annotated[str | None, typer.Option()] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    found = DirectClient(get_settings()).jobs(status=status, type=type, queue=queue, limit=limit)
    if as_json:
        typer.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    for job in found:
        typer.echo(
            f"{job.id}  {job.status.value:<10} {job.type:<16} {job.queue:<10}"
            f" p{job.priority:<3} {job.progress:5.1f}%  {job.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  {job.message}" if job.status is JobStatus.QUEUED and job.message else "")
        )


@app.command()
def show(job_id: str, as_json: JsonFlag = False) -> None:
    """Show one job with its attempts."""
    client = DirectClient(get_settings())
    job = client.get_job(job_id)
    _print_job(job, as_json, [a.to_dict() for a in client.job_attempts(job_id)])


@app.command()
def cancel(job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a queued or running job."""
    settings = get_settings()
    client = DirectClient(settings)
    job = client.cancel_job(job_id)
    if not job.status.is_terminal:  # running: the dispatcher stops it
        _wake(settings, client)
    _print_job(job, as_json) if as_json else typer.echo(f"{job.id} {_cancel_word(job)}")


def _cancel_word(job: JobRecord) -> str:
    return "cancelled" if job.status is JobStatus.CANCELLED else "cancelling"


@app.command()
def retry(job_id: str, as_json: JsonFlag = False) -> None:
    """Queue a failed or cancelled job again."""
    settings = get_settings()
    client = DirectClient(settings)
    job = client.retry_job(job_id)
    _wake(settings, client)
    _print_job(job, as_json) if as_json else typer.echo(f"{job.id} queued again")


@app.command()
def artifact(
    job_id: str,
    name: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; '-' for stdout.")
    ] = None,
) -> None:
    """Save one of a job's artifacts (to NAME in this folder unless --output says otherwise)."""
    data = DirectClient(get_settings()).job_artifact(job_id, name)
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = output or Path(name)
    target.write_bytes(data)
    typer.echo(f"{target} ({len(data)} bytes)")


@app.command()
def delete(job_id: str) -> None:
    """Delete a finished job with its attempts, events and artifacts."""
    DirectClient(get_settings()).delete_job(job_id)
    typer.echo(f"{job_id} deleted")


for command in (stats.stats, maintenance.prune, maintenance.orphans, maintenance.stuck):
    app.command()(command)

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

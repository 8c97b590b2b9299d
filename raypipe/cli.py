"""The ``raypipe`` command: start and stop the local stack, submit and inspect jobs."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer

from raypipe.config import Settings, get_settings
from raypipe.direct import DirectClient
from raypipe.exceptions import JobFailed, RaypipeError
from raypipe.jobs import JobRecord, JobStatus
from raypipe.runtime import cluster
from raypipe.runtime.names import DISPATCHER_ACTOR
from raypipe.store import create_engine
from raypipe.store import schema as store_schema

app = typer.Typer(
    help="Durable background jobs on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"raypipe: {message}", err=True)
    raise typer.Exit(code)


def _client(settings: Settings, ray_needed: bool = False, wake: bool = False) -> DirectClient:
    """A client; ``ray_needed`` fails without Ray, ``wake`` joins Ray only if it runs."""
    if ray_needed or wake:
        try:
            cluster.init_ray(settings)
        except RaypipeError:
            if ray_needed:
                raise
    return DirectClient(settings)


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


@app.command()
def up(
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for a new local Ray head.")] = None,
) -> None:
    """Start a local Ray head if none runs, migrate the database, start the dispatcher."""
    overrides: dict[str, Any] = {"ray_num_cpus": num_cpus} if num_cpus is not None else {}
    settings = get_settings(**overrides)
    started = cluster.start_head(settings)
    migrate_database(settings)
    cluster.init_ray(settings)
    cluster.start_actors(settings)
    where = "started a local Ray head" if started else f"joined Ray at {settings.ray_address}"
    typer.echo(f"raypipe is up: {where}; database {_safe_url(settings)}")


@app.command()
def down() -> None:
    """Stop the dispatcher and progress actor, and the local Ray head if `up` started it."""
    settings = get_settings()
    try:
        cluster.init_ray(settings)
    except RaypipeError:
        typer.echo("raypipe is not running")
        return
    stopped = cluster.stop_actors(settings)
    import ray

    ray.shutdown()
    head = cluster.stop_head(settings)
    typer.echo(f"stopped {', '.join(stopped) or 'nothing'}" + ("; stopped Ray" if head else ""))


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = get_settings()
    revision = migrate_database(settings)
    typer.echo(f"database {_safe_url(settings)} is at revision {revision}")


def migrate_database(settings: Settings) -> str:
    engine = create_engine(settings.database_url)
    try:
        store_schema.upgrade(engine)
        return store_schema.current_revision(engine) or "base"
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
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    wait_timeout: Annotated[float | None, typer.Option(help="Give up waiting after s.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job; with --wait, follow it and exit non-zero unless it completes."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"--payload is not valid JSON: {exc}", 2)
    settings = get_settings()
    client = _client(settings, ray_needed=wait, wake=True)
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "delay_s": delay,
        "max_attempts": max_attempts,
        "timeout_s": timeout,
        "tags": tag or [],
        "idempotency_key": idempotency_key,
    }
    handle = client.submit_many([{"type": type, "payload": body, **options}])[0]
    if not wait:
        _print_job(handle.refresh(), as_json) if as_json else typer.echo(handle.id)
        return
    if cluster.find_actor(settings, DISPATCHER_ACTOR) is None:
        _fail(f"job {handle.id} is queued, but no dispatcher runs: start one with `raypipe up`")
    job = handle.wait(wait_timeout, progress=not as_json and sys.stderr.isatty())
    _print_job(job, as_json)
    if job.status is not JobStatus.COMPLETED:
        _fail(
            str(
                JobFailed(
                    f"job {job.id} {job.status.value}"
                    + (f": {job.error.type}: {job.error.message}" if job.error else "")
                )
            )
        )


@app.command()
def jobs(
    status: Annotated[JobStatus | None, typer.Option()] = None,
    type: Annotated[str | None, typer.Option()] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    found = _client(get_settings()).jobs(status=status, type=type, queue=queue, limit=limit)
    if as_json:
        typer.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    for job in found:
        typer.echo(
            f"{job.id}  {job.status.value:<10} {job.type:<16} {job.queue:<10}"
            f" p{job.priority:<3} {job.progress:5.1f}%  {job.created_at:%Y-%m-%d %H:%M:%S}"
        )


@app.command()
def show(job_id: str, as_json: JsonFlag = False) -> None:
    """Show one job with its attempts."""
    client = _client(get_settings())
    job = client.get_job(job_id)
    _print_job(job, as_json, [a.to_dict() for a in client.job_attempts(job_id)])


@app.command()
def cancel(job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a queued or running job."""
    job = _client(get_settings(), wake=True).cancel_job(job_id)
    _print_job(job, as_json) if as_json else typer.echo(f"{job.id} {_cancel_word(job)}")


def _cancel_word(job: JobRecord) -> str:
    return "cancelled" if job.status is JobStatus.CANCELLED else "cancelling"


@app.command()
def retry(job_id: str, as_json: JsonFlag = False) -> None:
    """Queue a failed or cancelled job again."""
    job = _client(get_settings(), wake=True).retry_job(job_id)
    _print_job(job, as_json) if as_json else typer.echo(f"{job.id} queued again")


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def main() -> None:
    """Entry point: one-line errors on stderr and a non-zero exit code."""
    try:
        app()
    except RaypipeError as exc:
        typer.echo(f"raypipe: {exc.message}", err=True)
        sys.exit(1)

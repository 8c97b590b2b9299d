"""The ``raypipe`` command: start and stop the local stack, submit and inspect jobs.

Every failure ends the same way: one line on stderr starting with ``raypipe:`` and a
non-zero exit code (2 for bad input, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

import typer

from raypipe.config import Settings, get_settings
from raypipe.direct import DirectClient
from raypipe.exceptions import InvalidInput, NotRunning, RaypipeError
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


# -- Ray, found quickly ------------------------------------------------------------------
#
# ``ray.init(address=...)`` retries for many minutes when nothing listens at the address,
# so the CLI looks for a listening GCS port first and only then joins Ray.


def _gcs_address(settings: Settings) -> tuple[str, int] | None:
    """The ``(host, port)`` of the Ray cluster the settings name, or None when none is found."""
    address = settings.ray_address
    if address in ("", "auto"):
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # no cluster found, or Ray's private API moved
            return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None
    return host or "127.0.0.1", int(port)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ray_running(settings: Settings) -> bool:
    """Whether a Ray cluster answers at the settings' address (without joining it)."""
    address = settings.ray_address
    if address == "local" or "://" in address:
        return True  # nothing to probe: let Ray decide
    found = _gcs_address(settings)
    return found is not None and _port_open(*found)


def _init_ray(settings: Settings) -> None:
    """``cluster.init_ray``, sending this machine's Ray token when there is one."""
    _use_local_ray_token()
    cluster.init_ray(settings)


def _use_local_ray_token() -> None:
    """Use ``~/.ray/auth_token`` unless ``RAY_AUTH_MODE`` says otherwise.

    ``ray start`` turns token authentication on when that file exists, but ``ray.init``
    only sends the token by itself for ``address="auto"``, not for the explicit address
    that ``RAYPIPE_RAY_ADDRESS`` names: without this, joining the head `up` started fails
    after 20 s of retries. A cluster without authentication ignores the token.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication import authentication_token_setup as auth

        logger = logging.getLogger(auth.__name__)
        level = logger.level
        logger.setLevel(logging.ERROR)  # it warns on stderr that auth is on
        try:
            auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        finally:
            logger.setLevel(level)
    except Exception:  # Ray's private API moved: fall back to Ray's own behaviour
        pass


def _join_ray(settings: Settings) -> bool:
    """Join Ray if it runs; returns whether this process is connected now."""
    if not _ray_running(settings):
        return False
    try:
        _init_ray(settings)
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

    dispatcher = cluster.find_actor(settings, DISPATCHER_ACTOR)
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


# -- the local Ray head ------------------------------------------------------------------


def _start_head(settings: Settings) -> bool:
    """Start a local Ray head with ``ray start`` unless one answers; returns whether it did.

    Records the head's GCS port in the marker file, so that `down` stops that head and
    no other Ray on this machine.
    """
    if _ray_running(settings):
        return False
    command = [
        shutil.which("ray") or "ray",
        "start",
        "--head",
        f"--port={settings.ray_port}",
        "--disable-usage-stats",
        "--dashboard-host=127.0.0.1",
    ]
    if settings.ray_num_cpus is not None:
        command.append(f"--num-cpus={settings.ray_num_cpus}")
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).strip().splitlines() if line]
        raise NotRunning(f"`ray start` failed: {lines[-1] if lines else done.returncode}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker = settings.data_dir / cluster.STARTED_MARKER
    marker.write_text(json.dumps({"port": settings.ray_port}))
    return True


def _stop_head(settings: Settings) -> bool:
    """Stop the Ray head that `up` started (none if it joined one); returns whether it did.

    Unlike ``ray stop``, which ends every Ray process on the machine, this ends only the
    processes of the head on the recorded GCS port, and their children (workers, agents).
    """
    marker = settings.data_dir / cluster.STARTED_MARKER
    if not marker.exists():
        return False
    try:
        port = int(json.loads(marker.read_text() or "{}").get("port", settings.ray_port))
    except (ValueError, AttributeError):
        port = settings.ray_port
    _terminate(_head_processes(port))
    marker.unlink(missing_ok=True)
    return True


def _head_processes(port: int) -> list[Any]:
    """The processes of the local Ray head whose GCS listens on ``port``, with descendants."""
    import psutil  # Ray's vendored copy, on sys.path once ray is imported (by cluster)

    exclude = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if proc.pid not in exclude and _names_gcs_port(args, port):
            roots.append(proc)
    found = {proc.pid: proc for proc in roots}
    for proc in roots:
        with contextlib.suppress(psutil.Error):
            found.update((child.pid, child) for child in proc.children(recursive=True))
    return [proc for pid, proc in found.items() if pid not in exclude]


def _names_gcs_port(args: Sequence[str], port: int) -> bool:
    """Whether a command line is one of Ray's for the GCS on ``port``."""

    def names_port(arg: str, flag: str) -> bool:
        return arg.startswith(flag) and arg.rsplit(":", 1)[-1] == str(port)

    if f"--gcs_server_port={port}" in args:  # gcs_server itself
        return True
    if any(names_port(arg, "--gcs-address=") for arg in args):
        return True  # raylet, dashboard, monitors
    # Ray's client server names the GCS with --address, which other programs use too.
    return "ray.util.client.server" in args and any(names_port(a, "--address=") for a in args)


def _terminate(procs: Sequence[Any]) -> None:
    """Stop processes the way ``ray stop`` orders it: raylet, then the rest, then the GCS."""
    import psutil

    def name(proc: Any) -> str:
        try:
            return proc.name()
        except psutil.Error:
            return ""

    raylets = [p for p in procs if name(p) == "raylet"]
    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = [p for p in procs if p not in raylets and p not in gcs]
    for group in (raylets, rest, gcs):
        for proc in group:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _gone, alive = psutil.wait_procs(group, timeout=STOP_GRACE_S / 3)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=2)


# -- commands ----------------------------------------------------------------------------


@app.command()
def up(
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for a new local Ray head.")] = None,
) -> None:
    """Start a local Ray head if none runs, migrate the database, start the dispatcher."""
    overrides: dict[str, Any] = {"ray_num_cpus": num_cpus} if num_cpus is not None else {}
    settings = get_settings(**overrides)
    migrate_database(settings)
    started = _start_head(settings)
    if not _ray_running(settings):
        hint = f": `up` started one on port {settings.ray_port}" if started else ""
        raise NotRunning(f"no Ray answers at {settings.ray_address!r}{hint}")
    _init_ray(settings)
    cluster.start_actors(settings)
    where = "started a local Ray head" if started else f"joined Ray at {settings.ray_address}"
    typer.echo(f"raypipe is up: {where}; database {_safe_url(settings)}")


@app.command()
def down() -> None:
    """Stop the dispatcher and progress actor, and the local Ray head if `up` started it."""
    settings = get_settings()
    stopped: list[str] = []
    if _join_ray(settings):
        import ray

        stopped = cluster.stop_actors(settings)
        ray.shutdown()
    elif not (settings.data_dir / cluster.STARTED_MARKER).exists():
        typer.echo("raypipe is not running")
        return
    head = _stop_head(settings)
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
    }
    # Validated and written before joining Ray: bad input fails fast and writes nothing.
    handle = client.submit_many([{"type": type, "payload": body, **options}])[0]
    # A delayed job needs no wake-up (joining Ray takes seconds): it is found when due.
    joined = _wake(settings, client) if wait or delay <= 0 else False
    if not wait:
        _print_job(handle.refresh(), as_json) if as_json else typer.echo(handle.id)
        return
    if not joined or cluster.find_actor(settings, DISPATCHER_ACTOR) is None:
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

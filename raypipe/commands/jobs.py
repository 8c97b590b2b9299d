"""``raypipe submit | jobs | show | cancel | retry | logs | artifact | delete``: jobs, over HTTP or
straight on the database.

With ``--url`` (or ``RAYPIPE_URL``) a command talks to a deployment's API with ``--key``
(or ``RAYPIPE_API_KEY``) and sees what that key sees: its tenant, or every tenant for an
admin key. Without, it opens the configured database as tenant ``default`` and wakes the
dispatcher over Ray when one runs (it polls the database anyway).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer

from raypipe.client import Client
from raypipe.commands import EXIT_USAGE, JsonFlag, KeyOption, UrlOption, fail, join_ray, print_json
from raypipe.config import get_settings
from raypipe.direct import DirectClient
from raypipe.jobs import JobRecord, JobStatus
from raypipe.runtime.bells import wake_and_wait

#: Jobs read per request when listing over HTTP.
PAGE = 500

JobsClient = Client | DirectClient


@contextlib.contextmanager
def _client(url: str | None, key: str | None) -> Iterator[JobsClient]:
    """The API at ``url`` as ``key``'s tenant, or else the database itself."""
    if url:
        with Client(url, api_key=key) as http:
            yield http
        return
    direct = DirectClient(get_settings())
    try:
        yield direct
    finally:
        direct.close()


def _wake(client: JobsClient) -> bool:
    """Tell the dispatcher there is news (the API does so itself), if Ray runs; returns
    whether a dispatcher heard it."""
    if not isinstance(client, DirectClient) or not join_ray(client.settings):
        return False
    return wake_and_wait(client.settings)


def _print_job(job: JobRecord, as_json: bool, attempts: list[dict[str, Any]] | None = None) -> None:
    data = job.to_dict()
    if attempts is not None:
        data["attempts"] = attempts
    if as_json:
        print_json(data)
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
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Submit a job; with --wait, follow it and exit non-zero unless it completes."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)
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
    with _client(url, key) as client:
        # Validated and written before joining Ray: bad input fails fast and writes nothing.
        handle = client.submit_many([{"type": type, "payload": body, **options}])[0]
        # A delayed job needs no wake-up (joining Ray takes seconds): it is found when due.
        heard = _wake(client) if wait or delay <= 0 else False
        if not wait:
            _print_job(handle.refresh(), as_json) if as_json else typer.echo(handle.id)
            return
        if isinstance(client, DirectClient) and not heard:
            fail(f"job {handle.id} is queued, but no dispatcher runs: start one with `raypipe up`")
        try:
            job = handle.wait(wait_timeout, progress=not as_json and sys.stderr.isatty())
        except TimeoutError as exc:
            fail(f"{exc}; follow it with `raypipe show {handle.id}`")
    _print_job(job, as_json)
    if job.status is not JobStatus.COMPLETED:
        reason = f": {job.error.type}: {job.error.message}" if job.error else ""
        fail(f"job {job.id} {job.status.value}{reason}")


def jobs(
    status: Annotated[JobStatus | None, typer.Option()] = None,
    type: Annotated[str | None, typer.Option()] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """List jobs, newest first."""
    with _client(url, key) as client:
        if isinstance(client, Client):
            pages = client.list(status=status, type=type, queue=queue, limit=min(limit, PAGE))
            found = list(islice(pages, limit))
        else:
            found = client.jobs(status=status, type=type, queue=queue, limit=limit)
    if as_json:
        print_json([job.to_dict() for job in found])
        return
    for job in found:
        typer.echo(
            f"{job.id}  {job.status.value:<10} {job.type:<16} {job.queue:<10}"
            f" p{job.priority:<3} {job.progress:5.1f}%  {job.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  {job.message}" if job.status is JobStatus.QUEUED and job.message else "")
        )


def show(
    job_id: str, as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Show one job with its attempts."""
    with _client(url, key) as client:
        job = client.get_job(job_id)
        attempts = [a.to_dict() for a in client.job_attempts(job_id)]
    _print_job(job, as_json, attempts)


def cancel(
    job_id: str, as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Cancel a queued or running job."""
    with _client(url, key) as client:
        job = client.cancel_job(job_id)
        if not job.status.is_terminal:  # running: the dispatcher stops it
            _wake(client)
    word = "cancelled" if job.status is JobStatus.CANCELLED else "cancelling"
    _print_job(job, as_json) if as_json else typer.echo(f"{job.id} {word}")


def retry(
    job_id: str, as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Queue a failed or cancelled job again."""
    with _client(url, key) as client:
        job = client.retry_job(job_id)
        _wake(client)
    _print_job(job, as_json) if as_json else typer.echo(f"{job.id} queued again")


def _print_line(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(line))
        return
    ts = datetime.fromisoformat(line["ts"])
    typer.echo(f"{ts:%H:%M:%S.%f}"[:-3] + f" {line['level']:<8} {line['message']}")


def logs(
    job_id: str,
    attempt: Annotated[
        int | None, typer.Option(min=1, help="Which attempt (default: the latest).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print lines as they come, until it ends.")
    ] = False,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Print what the job's processor logged through ctx.logger in one attempt (with
    --json: the API's answer, or with --follow one JSON line per log line)."""
    with _client(url, key) as client:
        if follow:
            for line in client.follow_logs(job_id, attempt):
                _print_line(line, as_json)
            return
        found = client.logs(job_id, attempt)
    if as_json:
        print_json(found)
        return
    if found["dropped"]:
        typer.echo(f"[{found['dropped']} older lines dropped: over log_max_bytes]")
    for line in found["lines"]:
        _print_line(line, False)


def artifact(
    job_id: str,
    name: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; '-' for stdout.")
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Save one of a job's artifacts (to NAME in this folder unless --output says otherwise)."""
    with _client(url, key) as client:
        data = client.job_artifact(job_id, name)
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = output or Path(name)
    target.write_bytes(data)
    typer.echo(f"{target} ({len(data)} bytes)")


def delete(job_id: str, url: UrlOption = None, key: KeyOption = None) -> None:
    """Delete a finished job with its attempts, events and artifacts."""
    with _client(url, key) as client:
        client.delete_job(job_id)
    typer.echo(f"{job_id} deleted")


COMMANDS = (submit, jobs, show, cancel, retry, logs, artifact, delete)

"""``raypipe queues …``: each queue's depth and state, and pausing and resuming one, through
a deployment's API (``--url``, as ``--key``'s tenant; pausing takes an admin key) or straight
on the database (the operator's, so every tenant's jobs count)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from raypipe.client import Client
from raypipe.commands import JsonFlag, KeyOption, UrlOption, database, print_json
from raypipe.config import get_settings
from raypipe.store import JobStore
from raypipe.store.queues import QueueStore
from raypipe.store.tenants import TenantStore

app = typer.Typer(
    help="Queues: depth, running jobs, and pausing one (it accepts jobs and starts none).",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="A configured queue's name.")]


def _change(name: str, pause: bool, url: str | None, key: str | None) -> dict[str, Any]:
    """Pause or resume ``name``; the queue as ``GET /v1/queues`` shows it afterwards."""
    if url:
        with Client(url, api_key=key) as client:
            return client.pause_queue(name) if pause else client.resume_queue(name)
    settings = get_settings()
    with database(settings) as engine:
        store = QueueStore(engine)
        store.pause(settings, name) if pause else store.resume(settings, name)
        return store.overview(settings, JobStore(engine).queue_stats(), [name])[0]


@app.command("list")
def list_(as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None) -> None:
    """Each configured queue: paused or not, jobs waiting and running, and its limit."""
    if url:
        with Client(url, api_key=key) as client:
            rows = client.queues()
    else:
        settings = get_settings()
        with database(settings) as engine:
            stats = JobStore(engine).queue_stats()
            # On the database, no dispatcher is asked: usage shows as null.
            tenants = TenantStore(engine).by_queue(settings.tenants.weights, {})
            rows = [
                {**row, "tenants": tenants.get(row["name"], [])}
                for row in QueueStore(engine).overview(settings, stats, settings.queues)
            ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        state = "paused" if row["paused"] else "active"
        typer.echo(
            f"{row['name']:<20} {state:<7} {row['depth']:>7} queued"
            f" {row['running']:>5} running (at most {row['concurrency']})"
        )


@app.command()
def pause(
    name: Name, as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Start none of the queue's jobs until it is resumed (running ones finish); it still
    accepts submissions, and stays paused across restarts."""
    queue = _change(name, True, url, key)
    print_json(queue) if as_json else typer.echo(f"queue {name} paused since {queue['paused_at']}")


@app.command()
def resume(
    name: Name, as_json: JsonFlag = False, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Start the queue's jobs again (at the dispatcher's next poll)."""
    queue = _change(name, False, url, key)
    print_json(queue) if as_json else typer.echo(f"queue {name} resumed")

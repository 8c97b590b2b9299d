"""``raypipe queues …``: each queue's depth and state, and pausing and resuming one,
straight on the database (the operator's, so every tenant's jobs count)."""

from __future__ import annotations

from typing import Annotated

import typer

from raypipe.commands import JsonFlag, database, print_json
from raypipe.config import get_settings
from raypipe.jobs import iso
from raypipe.store import JobStore
from raypipe.store.queues import QueueStore

app = typer.Typer(
    help="Queues: depth, running jobs, and pausing one (it accepts jobs and starts none).",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="A configured queue's name.")]


@app.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """Each configured queue: paused or not, jobs waiting and running, and its limit."""
    settings = get_settings()
    with database(settings) as engine:
        stats = JobStore(engine).queue_stats()
        paused = QueueStore(engine).paused()
    rows = [
        {
            "name": name,
            "paused": name in paused,
            "paused_at": iso(paused.get(name)),
            "depth": stats.get(name, {}).get("depth", 0),
            "running": stats.get(name, {}).get("running", 0),
            "concurrency": queue.concurrency,
        }
        for name, queue in sorted(settings.queues.items())
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
def pause(name: Name) -> None:
    """Start none of the queue's jobs until it is resumed (running ones finish); it still
    accepts submissions, and stays paused across restarts."""
    settings = get_settings()
    with database(settings) as engine:
        since = QueueStore(engine).pause(settings, name)
    typer.echo(f"queue {name} paused since {iso(since)}")


@app.command()
def resume(name: Name) -> None:
    """Start the queue's jobs again (at the dispatcher's next poll)."""
    settings = get_settings()
    with database(settings) as engine:
        QueueStore(engine).resume(settings, name)
    typer.echo(f"queue {name} resumed")

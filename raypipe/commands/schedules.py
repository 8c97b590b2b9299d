"""``raypipe schedules …``: cron schedules, straight on the database.

The dispatcher looks for due schedules at least every ``poll_interval_s``, so changes
made here need no wake-up. Errors are raypipe exceptions, which ``raypipe``'s entry point
prints as one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from typing import Annotated, Any

import typer

from raypipe import cron
from raypipe.commands import JsonFlag, database, print_json
from raypipe.config import get_settings
from raypipe.cron import Schedule
from raypipe.exceptions import InvalidInput
from raypipe.jobs import iso, utcnow
from raypipe.store.schedules import ScheduleStore
from raypipe.submission import DEFAULT_TENANT

app = typer.Typer(
    help="Cron schedules: each fire submits a job.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Which = Annotated[str, typer.Argument(help="The schedule's name or id.")]
TenantOption = Annotated[
    str | None, typer.Option(help="The tenant, where several have a schedule of this name.")
]


@contextmanager
def _store() -> Iterator[ScheduleStore]:
    with database(get_settings()) as engine:
        yield ScheduleStore(engine)


def _print(schedule: Schedule, as_json: bool) -> None:
    if as_json:
        print_json(schedule.to_dict())
        return
    state = "enabled" if schedule.enabled else "paused"
    origin = " (from the configuration)" if schedule.source == "config" else ""
    nxt = _when(schedule.next_fire_at, schedule.timezone) if schedule.next_fire_at else "-"
    typer.echo(
        f"{schedule.name:<24} {schedule.tenant:<12} {schedule.cron:<16} {schedule.timezone:<16}"
        f" {state:<8} next {nxt}  fires {schedule.fires}{origin}"
    )


def _when(instant: datetime, tz: str) -> str:
    """An instant in the schedule's zone, with UTC alongside."""
    local = instant.astimezone(cron.check_timezone(tz))
    return f"{local:%Y-%m-%d %H:%M %Z} ({iso(instant)})"


@app.command("list")
def list_(tenant: Annotated[str | None, typer.Option()] = None, as_json: JsonFlag = False) -> None:
    """List schedules, by tenant and name."""
    with _store() as store:
        found = store.list(tenant)
        if as_json:
            print_json([s.to_dict() for s in found])
            return
        for schedule in found:
            _print(schedule, False)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Unique within the tenant.")],
    cron_: Annotated[str, typer.Option("--cron", help="Five fields, e.g. '0 3 * * *', or @daily.")],
    type: Annotated[str, typer.Option("--type", help="The job type, e.g. noop.")],
    payload: Annotated[str, typer.Option(help="The job's payload as JSON.")] = "{}",
    timezone: Annotated[str, typer.Option(help="IANA name, e.g. Europe/Paris.")] = "UTC",
    missed: Annotated[
        str, typer.Option(help="Missed fires: skip, run_once (the latest) or run_all.")
    ] = "run_once",
    tenant: Annotated[str, typer.Option()] = DEFAULT_TENANT,
    as_json: JsonFlag = False,
) -> None:
    """Create a schedule that submits a job of TYPE with PAYLOAD on each fire."""
    try:
        body: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc}"
        raise InvalidInput(
            f"--payload: {problem}", details=[{"loc": ["payload"], "msg": problem}]
        ) from None
    settings = get_settings()
    with _store() as store:
        schedule = store.create(
            settings,
            tenant=tenant,
            name=name,
            cron=cron_,
            timezone=timezone,
            spec={"type": type, "payload": body},
            missed=missed,
            admin=True,  # the CLI is the operator's, on the database itself
        )
        _print(schedule, as_json)


@app.command()
def pause(which: Which, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Stop firing until resumed."""
    settings = get_settings()
    with _store() as store:
        _print(
            store.update(store.find(which, tenant).id, None, settings, admin=True, enabled=False),
            as_json,
        )


@app.command()
def resume(which: Which, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Fire again, from the next instant after now."""
    settings = get_settings()
    with _store() as store:
        _print(
            store.update(store.find(which, tenant).id, None, settings, admin=True, enabled=True),
            as_json,
        )


@app.command()
def delete(which: Which, tenant: TenantOption = None) -> None:
    """Delete a schedule (the jobs it submitted stay)."""
    with _store() as store:
        removed = store.delete(store.find(which, tenant).id)
        typer.echo(f"deleted schedule {removed.name} of tenant {removed.tenant!r}")


@app.command("next")
def next_(
    which: Annotated[
        str | None, typer.Argument(help="A schedule's name or id; or give --cron.")
    ] = None,
    cron_: Annotated[
        str | None, typer.Option("--cron", help="An expression to try, without a schedule.")
    ] = None,
    timezone: Annotated[str, typer.Option(help="With --cron: its time zone.")] = "UTC",
    count: Annotated[int, typer.Option(min=1, max=1000)] = 5,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the next fire times of a schedule, or of an expression (handy to check one)."""
    if which is not None and cron_ is None:
        with _store() as store:
            schedule = store.find(which, tenant)
        expression, zone = schedule.cron, schedule.timezone
    elif which is None and cron_ is not None:
        expression, zone = cron_, timezone
    else:
        problem = "give a schedule's name or id, or --cron (not both)"
        raise InvalidInput(problem, details=[{"loc": ["cron"], "msg": problem}])
    cron.check(expression, zone)
    times = list(islice(cron.fires_after(expression, zone, utcnow()), count))
    if as_json:
        typer.echo(json.dumps([iso(t) for t in times]))
        return
    for instant in times:
        typer.echo(_when(instant, zone))

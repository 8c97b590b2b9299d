"""``raypipe schedules …``: cron schedules, through a deployment's API (``--url``, as
``--key``'s tenant) or straight on the database.

The dispatcher looks for due schedules at least every ``poll_interval_s``, so changes
made here need no wake-up. Errors are raypipe exceptions, which ``raypipe``'s entry point
prints as one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from typing import Annotated, Any

import typer
from sqlalchemy.engine import Engine

from raypipe import cron
from raypipe.client import Client
from raypipe.commands import (
    EXIT_USAGE,
    JsonFlag,
    KeyOption,
    UrlOption,
    database,
    fail,
    print_json,
)
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


class _Database:
    """Schedules straight on the database, as the operator (every tenant)."""

    def __init__(self, engine: Engine):
        self.settings = get_settings()
        self.store = ScheduleStore(engine)

    def list(self, tenant: str | None) -> list[Schedule]:
        return self.store.list(tenant)

    def find(self, which: str, tenant: str | None) -> Schedule:
        return self.store.find(which, tenant)

    def create(self, tenant: str | None, **fields: Any) -> Schedule:
        # The CLI is the operator's, on the database itself: admin.
        return self.store.create(
            self.settings, tenant=tenant or DEFAULT_TENANT, admin=True, **fields
        )

    def enable(self, schedule: Schedule, enabled: bool) -> Schedule:
        return self.store.update(schedule.id, None, self.settings, admin=True, enabled=enabled)

    def delete(self, schedule: Schedule) -> None:
        self.store.delete(schedule.id)


class _Api:
    """Schedules through a deployment's API, as the key's tenant (every tenant's for an
    admin key)."""

    def __init__(self, client: Client):
        self.client = client

    def list(self, tenant: str | None) -> list[Schedule]:
        found = [Schedule.from_dict(s) for s in self.client.schedules()]
        return [s for s in found if tenant in (None, s.tenant)]

    def find(self, which: str, tenant: str | None) -> Schedule:
        return cron.pick(self.list(tenant), which)

    def create(self, tenant: str | None, **fields: Any) -> Schedule:
        if tenant is not None:
            fail("--tenant: over --url a schedule is the key's tenant's", EXIT_USAGE)
        job = fields.pop("spec")
        return Schedule.from_dict(self.client.create_schedule(job=job, **fields))

    def enable(self, schedule: Schedule, enabled: bool) -> Schedule:
        change = self.client.resume_schedule if enabled else self.client.pause_schedule
        return Schedule.from_dict(change(schedule.id))

    def delete(self, schedule: Schedule) -> None:
        self.client.delete_schedule(schedule.id)


@contextmanager
def _schedules(url: str | None, key: str | None) -> Iterator[_Database | _Api]:
    """The schedules at ``url`` as ``key``'s tenant, or else on the database itself."""
    if url:
        with Client(url, api_key=key) as client:
            yield _Api(client)
        return
    with database(get_settings()) as engine:
        yield _Database(engine)


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
def list_(
    tenant: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """List schedules, by tenant and name."""
    with _schedules(url, key) as schedules:
        found = schedules.list(tenant)
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
    tenant: Annotated[str | None, typer.Option(help="Default: 'default'.")] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Create a schedule that submits a job of TYPE with PAYLOAD on each fire."""
    try:
        body: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc}"
        raise InvalidInput(
            f"--payload: {problem}", details=[{"loc": ["payload"], "msg": problem}]
        ) from None
    with _schedules(url, key) as schedules:
        schedule = schedules.create(
            tenant,
            name=name,
            cron=cron_,
            timezone=timezone,
            spec={"type": type, "payload": body},
            missed=missed,
        )
    _print(schedule, as_json)


def _enabling(enabled: bool) -> Callable[..., None]:
    """``pause`` (``enabled`` False) or ``resume`` (True): the same command but for the
    switch it sets."""

    def command(
        which: Which,
        tenant: TenantOption = None,
        as_json: JsonFlag = False,
        url: UrlOption = None,
        key: KeyOption = None,
    ) -> None:
        with _schedules(url, key) as schedules:
            _print(schedules.enable(schedules.find(which, tenant), enabled), as_json)

    return command


app.command("pause", help="Stop firing until resumed.")(_enabling(False))
app.command("resume", help="Fire again, from the next instant after now.")(_enabling(True))


@app.command()
def delete(
    which: Which, tenant: TenantOption = None, url: UrlOption = None, key: KeyOption = None
) -> None:
    """Delete a schedule (the jobs it submitted stay)."""
    with _schedules(url, key) as schedules:
        removed = schedules.find(which, tenant)
        schedules.delete(removed)
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
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Show the next fire times of a schedule, or of an expression (handy to check one)."""
    if which is not None and cron_ is None:
        with _schedules(url, key) as schedules:
            schedule = schedules.find(which, tenant)
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

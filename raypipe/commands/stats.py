"""``raypipe stats``: processing statistics, read straight from the database, or from a
deployment's API with ``--url`` (its key's tenant, or any for an admin key)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import typer

from raypipe.client import Client
from raypipe.commands import JsonFlag, KeyOption, UrlOption, database, print_json
from raypipe.config import get_settings
from raypipe.exceptions import InvalidInput
from raypipe.jobs import parse_iso, utcnow
from raypipe.store.stats import StatsStore

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
QUEUE_COLUMNS = ("queue", "depth", "runnable", "running", "oldest", "wait mean", "p50", "p95")
QUEUE_ROW = "{:<16} {:>6} {:>8} {:>7} {:>7} {:>10} {:>6} {:>6}"


def when(option: str, text: str | None, now: datetime) -> datetime | None:
    """``text`` as an instant: a span before ``now`` ("90m", "24h", "7d") or an ISO time
    (in UTC unless it names a zone, like every time raypipe prints)."""
    if text is None:
        return None
    text = text.strip()
    try:
        if match := AGO.fullmatch(text):
            return now - timedelta(**{UNITS[match[2]]: float(match[1])})
        return parse_iso(text).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        problem = "give a span before now (90m, 24h, 7d) or an ISO time"
        raise InvalidInput(
            f"{option}: {problem}, not {text!r}", details=[{"loc": [option], "msg": problem}]
        ) from None


def stats(
    type: Annotated[str | None, typer.Option(help="Only jobs of this type.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs of this queue.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only jobs of this tenant.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Start: a span before now (90m, 24h, 7d) or an ISO time.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End, like --since; default now.")] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Success rate, durations, throughput, retries, errors and queues (default: the last
    24 hours)."""
    now = utcnow()
    start, end = when("--since", since, now), when("--until", until, now)
    if url:
        with Client(url, api_key=key) as client:
            found = client.stats(type, queue, tenant, start, end)
    else:
        with database(get_settings()) as engine:
            found = (
                StatsStore(engine, clock=lambda: now)
                .compute(tenant=tenant, type=type, queue=queue, since=start, until=end)
                .to_dict()
            )
    if as_json:
        print_json(found)
    else:
        typer.echo(table(found))


def table(data: dict[str, Any]) -> str:
    """The statistics (as ``Stats.to_dict`` and the API give them) as a few aligned lines
    for a terminal."""
    window, jobs, attempts = data["window"], data["jobs"], data["attempts"]
    rate = "-" if data["success_rate"] is None else f"{100 * data['success_rate']:.1f}%"
    filters = ", ".join(f"{k}={v}" for k, v in data["filters"].items() if v is not None)
    errors = ", ".join(f"{e['type']} {e['count']}" for e in data["errors"]) or "none"
    duration = data["duration_s"]
    lines = [
        f"window     {window['since']} .. {window['until']} ({window['hours']:g} h)"
        + (f"; {filters}" if filters else ""),
        f"jobs       {jobs['total']} ended: {_counts(jobs)}",
        f"success    {rate} (completed / completed + failed)",
        f"throughput {data['throughput_per_hour']:.2f} jobs/h",
        f"attempts   {attempts['total']} finished: {_counts(attempts)}",
        f"retries    {data['retries']} attempts of {data['retried_jobs']} jobs",
        f"duration   {_spread(duration)} ({duration['count']} completed attempts)",
        f"errors     {errors}",
    ]
    if data["queues"]:
        lines += ["", QUEUE_ROW.format(*QUEUE_COLUMNS)]
        lines += [
            QUEUE_ROW.format(
                q["queue"],
                q["depth"],
                q["runnable"],
                q["running"],
                *map(
                    _seconds,
                    (q["oldest_waiting_s"], *(q["wait_s"][k] for k in ("mean", "p50", "p95"))),
                ),
            )
            for q in data["queues"]
        ]
    return "\n".join(lines)


def _counts(by_status: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in by_status.items() if status != "total")


def _spread(figures: dict[str, Any]) -> str:
    return "  ".join(f"{name} {_seconds(figures[name])}" for name in ("mean", "p50", "p95", "max"))


def _seconds(value: float | None) -> str:
    """A duration short enough for a column: 0.25s, 42s, 7.5m, 3.2h, 2.1d."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s" if value < 10 else f"{value:.0f}s"
    size, unit = next((s, u) for s, u in ((86400, "d"), (3600, "h"), (60, "m")) if value >= s)
    return f"{value / size:.1f}{unit}"

"""Cron schedules as pure functions: parsing, fire times in a time zone, missed-fire
policy, what a valid schedule is, and what a configured one should be.

No SQL and no clock: the store (``store/schedules.py``) passes ``now`` and the rows in,
so every decision is testable alone.

Daylight saving time follows cronie (Vixie cron): a local time that does not exist
(spring forward) fires once, at the first instant after the gap (croniter's behaviour);
a local time that occurs twice (fall back) fires once, at its first occurrence, unless
the minute or hour field is a wildcard (``*``, ``*/15``), whose schedules keep firing at
every real instant through the repeated hour.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from itertools import islice
from typing import Any, NoReturn, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from raypipe import registry
from raypipe.config import (
    MAINTENANCE_SCHEDULES,
    MAX_CATCH_UP,
    MissedFires,
    ScheduleConfig,
    Settings,
    config_file,
)
from raypipe.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from raypipe.jobs import iso
from raypipe.submission import located, prepare, relocated, summary

#: The shorthands raypipe accepts, as their five fields (``@reboot`` has no meaning here).
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Schedule names: they appear in job tags (``schedule:<name>``) and on command lines.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
#: Under the ``skip`` policy, how late the latest instant may be and still fire. Cron
#: instants are at least a minute apart, so a minute never lets two instants through,
#: and a fire that is merely a dispatcher round (or a busy database) late still happens.
SKIP_GRACE = timedelta(seconds=60)
MAX_CRON_LENGTH = 200
MAX_TIMEZONE_LENGTH = 64
#: Job spec fields a schedule sets itself on each fire.
SET_PER_FIRE = ("run_at", "idempotency_key")


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        _invalid(
            "name",
            "1 to 200 letters, digits and _ . : - (starting with a letter or digit)",
        )


def check_missed(missed: str) -> None:
    if missed not in get_args(MissedFires):
        _invalid("missed", f"must be one of {', '.join(get_args(MissedFires))}")


def check_spec_fields(spec: dict[str, Any]) -> None:
    """Refuse what each fire sets: a fixed ``run_at`` or ``idempotency_key`` would make
    every fire the same job."""
    given = [name for name in SET_PER_FIRE if spec.get(name) is not None]
    if given:
        problem = "set by the schedule on each fire"
        raise InvalidInput(
            f"job.{given[0]}: {problem}",
            details=[{"loc": ["job", name], "msg": problem} for name in given],
        )


def fire_spec(
    spec: dict[str, Any], schedule_id: str, name: str, instant: datetime
) -> dict[str, Any]:
    """The job spec of one fire: the schedule's, tagged with its name and keyed by the
    instant, so that the database refuses a second job for the same instant."""
    tags = spec.get("tags", [])
    tag = f"schedule:{name}"
    if isinstance(tags, list) and tag not in tags:
        tags = [*tags, tag]  # anything but a list is left for the spec's validation to refuse
    return {**spec, "tags": tags, "idempotency_key": f"schedule:{schedule_id}:{iso(instant)}"}


@lru_cache(maxsize=1024)
def check_cron(cron: str) -> str:
    """The five fields of a standard cron expression (shorthands expanded), or
    :class:`InvalidInput` at ``cron``. Seconds or years fields and ``@reboot`` are refused."""
    fields = _fields(cron)
    try:
        # An expression like "0 0 30 2 *" parses but never fires: find one instant.
        croniter(fields, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except CroniterBadDateError:
        _invalid("cron", f"{cron!r} never matches a date")
    except (CroniterError, ValueError) as exc:
        _invalid("cron", f"{cron!r} is not a valid cron expression: {exc}")
    return fields


def check_timezone(name: str) -> ZoneInfo:
    """The IANA time zone called ``name`` (``Europe/Paris``), or :class:`InvalidInput`."""
    if not name or len(name) > MAX_TIMEZONE_LENGTH:
        _invalid("timezone", "must be an IANA time zone name such as 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        _invalid("timezone", f"unknown time zone {name!r}; use an IANA name like 'Europe/Paris'")


def check(cron: str, tz: str) -> None:
    """Check both, reporting every problem in one :class:`InvalidInput`."""
    every(lambda: check_cron(cron), lambda: check_timezone(tz))


def every(*checks: Callable[[], object]) -> None:
    """Run every check; raise one :class:`InvalidInput` with the details of all that fail."""
    details: list[dict[str, Any]] = []
    for run in checks:
        try:
            run()
        except InvalidInput as exc:
            details.extend(exc.details)
    if details:
        raise InvalidInput(summary(details), details=details)


def next_fire(cron: str, tz: str, after: datetime) -> datetime:
    """The first instant strictly after ``after`` (aware UTC)."""
    return next(fires_after(cron, tz, after))


def fires_after(cron: str, tz: str, after: datetime) -> Iterator[datetime]:
    """Every instant strictly after ``after``, in order, as aware UTC datetimes."""
    return _instants(cron, tz, after, backward=False)


def fires_between(cron: str, tz: str, after: datetime, until: datetime) -> Iterator[datetime]:
    """Every instant in (``after``, ``until``], in order, as aware UTC datetimes."""
    for instant in fires_after(cron, tz, after):
        if instant > until:
            return
        yield instant


def due_fires(
    cron: str, tz: str, next_fire_at: datetime, now: datetime, missed: MissedFires
) -> tuple[list[datetime], datetime]:
    """What to fire at ``now`` for a schedule due at ``next_fire_at``, and its next due time.

    The instants due are those in [``next_fire_at``, ``now``]; more than one means fires
    were missed (nothing ran). ``skip`` fires the latest only if it is at most
    :data:`SKIP_GRACE` old, ``run_once`` fires the latest, ``run_all`` fires each (the
    latest :data:`MAX_CATCH_UP`). Walking back from ``now`` keeps a long outage cheap.
    """
    if next_fire_at > now:
        return [], next_fire_at
    wanted = MAX_CATCH_UP if missed == "run_all" else 1
    latest_first = [
        instant for instant in islice(_backward(cron, tz, now), wanted) if instant >= next_fire_at
    ]
    if missed == "skip":
        latest_first = [instant for instant in latest_first if now - instant <= SKIP_GRACE]
    return latest_first[::-1], next_fire(cron, tz, now)


# -- iteration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A schedule as the store keeps it."""

    id: str
    tenant: str
    name: str
    cron: str
    timezone: str
    spec: dict[str, Any]
    missed: MissedFires
    enabled: bool
    source: str
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_job_id: str | None
    fires: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """A schedule as the API shows it (``to_dict``), read back (by the CLI over HTTP)."""

        def instant(key: str) -> datetime | None:
            return datetime.fromisoformat(data[key]) if data.get(key) else None

        return cls(
            **{k: data[k] for k in ("id", "tenant", "name", "cron", "timezone", "missed")},
            **{k: data[k] for k in ("enabled", "source", "last_job_id", "fires")},
            spec=data["job"],
            next_fire_at=instant("next_fire_at"),
            last_fire_at=instant("last_fire_at"),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The schedule as the API and the CLI show it."""
        return {
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "cron": self.cron,
            "timezone": self.timezone,
            "job": self.spec,
            "missed": self.missed,
            "enabled": self.enabled,
            "source": self.source,
            "next_fire_at": iso(self.next_fire_at),
            "last_fire_at": iso(self.last_fire_at),
            "last_job_id": self.last_job_id,
            "fires": self.fires,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


def pick(found: list[Schedule], name_or_id: str) -> Schedule:
    """The schedule ``name_or_id`` means among those with that id or name: the id wins; a
    name that several tenants use is refused."""
    exact = [s for s in found if s.id == name_or_id]
    if exact:
        return exact[0]
    named = [s for s in found if s.name == name_or_id]
    if not named:
        raise NotFound(f"no schedule {name_or_id!r}")
    if len(named) > 1:
        tenants = ", ".join(sorted(s.tenant for s in named))
        raise Conflict(
            f"tenants {tenants} each have a schedule named {name_or_id!r}:"
            " name the tenant or use the id"
        )
    return named[0]


@dataclass
class SyncReport:
    """What a sync of the configured schedules did, by name, and what it could not do."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    #: Enabled in the configuration but paused with the API or CLI (a pause outlives restarts).
    paused: list[str] = field(default_factory=list)
    #: Invalid entries, as ``schedules.<name>: <problem>``; nothing was written for them.
    problems: list[str] = field(default_factory=list)


def configured_row(
    current: Schedule | None,
    name: str,
    config: ScheduleConfig,
    settings: Settings,
    now: datetime,
    report: SyncReport,
) -> dict[str, Any] | None:
    """The row to write for one configured schedule (``current``: its row now, if any);
    None when it is up to date. Pauses it keeps are added to ``report``."""
    if current is not None and current.source != "config":
        problem = f"tenant {config.tenant!r} has a schedule of this name made with the API"
        raise InvalidInput(problem, details=[{"loc": ["name"], "msg": problem}])
    wanted = {
        "tenant": config.tenant,
        "name": name,
        "cron": config.cron,
        "timezone": config.timezone,
        "spec": config.job,
        "missed": config.missed,
    }
    if current is None:
        row = {
            **wanted,
            "id": str(uuid.uuid4()),
            "enabled": config.enabled,
            "source": "config",
            "last_fire_at": None,
            "last_job_id": None,
            "fires": 0,
            "created_at": now,
            "updated_at": now,
        }
        check_schedule(row, settings, now)
        return {**row, "next_fire_at": next_fire_of(row, now)}
    enabled = current.enabled and config.enabled
    if enabled != config.enabled:
        report.paused.append(name)
    if all(getattr(current, key) == value for key, value in wanted.items()) and (
        enabled == current.enabled
    ):
        return None
    row = {**vars(current), **wanted, "enabled": enabled, "updated_at": now}
    check_schedule(row, settings, now)
    if not enabled:
        row["next_fire_at"] = None
    elif (current.cron, current.timezone) != (config.cron, config.timezone):
        row["next_fire_at"] = next_fire_of(row, now)
    return row


def next_fire_of(row: dict[str, Any], now: datetime) -> datetime | None:
    """The first fire time after ``now`` of an enabled schedule; None while disabled."""
    return next_fire(row["cron"], row["timezone"], now) if row["enabled"] else None


def check_schedule(
    row: dict[str, Any], settings: Settings, now: datetime, admin: bool = True
) -> None:
    """Validate every field of a schedule, reporting each problem (``loc`` as the API's
    fields: name, cron, timezone, missed, job…) in one :class:`InvalidInput`."""
    every(
        lambda: check_name(row["name"]),
        lambda: check_cron(row["cron"]),
        lambda: check_timezone(row["timezone"]),
        lambda: check_missed(row["missed"]),
        lambda: check_spec_fields(row["spec"]),
        lambda: _check_spec(row, settings, now, admin),
    )


def _check_spec(row: dict[str, Any], settings: Settings, now: datetime, admin: bool) -> None:
    """The spec must make a job now, exactly as a fire will (tag and key included)."""
    registry.load(settings.processor_modules)
    spec = fire_spec(row["spec"], row["id"], row["name"], now)
    try:
        prepare([spec], settings, now, row["tenant"], admin=admin)
    except Forbidden as exc:
        raise relocated(exc, ["job"]) from None
    except InvalidInput as exc:
        raise InvalidInput(
            exc.message, details=located(exc.details, ["job"]), more=exc.more
        ) from None


def configured_conflict(schedule: Schedule, verb: str) -> Conflict:
    where = f"the configuration file ({config_file()})"
    if schedule.name in MAINTENANCE_SCHEDULES:
        where = f"raypipe's built-in maintenance (maintenance_schedules) or {where}"
    return Conflict(
        f"schedule {schedule.name!r} comes from {where} and cannot be {verb} here:"
        " change it there (pausing and resuming it here is fine)"
    )


def _backward(cron: str, tz: str, until: datetime) -> Iterator[datetime]:
    """Instants at or before ``until``, newest first (croniter's previous is strict, and
    instants fall on whole seconds, so start a microsecond later)."""
    return _instants(cron, tz, until + timedelta(microseconds=1), backward=True)


def _instants(cron: str, tz: str, start: datetime, backward: bool) -> Iterator[datetime]:
    if start.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous: pass an aware UTC datetime")
    fields, zone = check_cron(cron), check_timezone(tz)
    wild = _is_wild(fields)
    step = croniter(fields, start.astimezone(zone))
    while True:
        try:
            local = step.get_prev(datetime) if backward else step.get_next(datetime)
        except CroniterBadDateError:
            return
        instant = local.astimezone(timezone.utc)
        if wild or not _repeated(instant, zone):
            yield instant


def _is_wild(fields: str) -> bool:
    minute, hour = fields.split()[:2]
    return minute.startswith("*") or hour.startswith("*")


def _repeated(instant: datetime, zone: ZoneInfo) -> bool:
    """Whether ``instant`` is the second occurrence of a local time (fall back)."""
    local = instant.astimezone(zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


# -- parsing -----------------------------------------------------------------------------


def _fields(cron: str) -> str:
    text = " ".join(cron.split())
    if not text or len(cron) > MAX_CRON_LENGTH:
        _invalid(
            "cron",
            f"must be a cron expression of five fields ({MAX_CRON_LENGTH} characters at most)",
        )
    if not (text.isascii() and text.isprintable()):
        _invalid("cron", "must be printable ASCII")
    if text.startswith("@"):
        fields = ALIASES.get(text.lower())
        if fields is None:
            known = ", ".join(ALIASES)
            _invalid("cron", f"{text!r} is not supported; shorthands: {known}")
        return fields
    count = len(text.split())
    if count != 5:
        _invalid(
            "cron",
            f"{cron!r} has {count} field{'s' * (count != 1)}; give five: minute hour"
            " day-of-month month day-of-week (no seconds or years fields)",
        )
    return text


def _invalid(field: str, problem: str) -> NoReturn:
    raise InvalidInput(f"{field}: {problem}", details=[{"loc": [field], "msg": problem}])

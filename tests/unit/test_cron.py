"""Cron schedules as pure functions: parsing, time zones and DST, the missed-fire policy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import islice

import pytest

from raypipe import cron
from raypipe.config import MAX_CATCH_UP, MissedFires
from raypipe.exceptions import InvalidInput

UTC = timezone.utc
PARIS = "Europe/Paris"


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def locs(exc: pytest.ExceptionInfo[InvalidInput]) -> list[list[str | int]]:
    return [detail["loc"] for detail in exc.value.details]


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * * *",  # seconds
        "0 0 1 1 * 2030",  # years
        "@reboot",
        "@every_minute",
        "",
        "   ",
        "0 0 * *",
        "61 * * * *",
        "*/0 * * * *",
        "0 0 * JANX *",
        "0 0 30 2 *",  # never fires
        "0 0 * * *\x00",
        "\udcff * * * *",
        "0 " * 150,
    ],
)
def test_invalid_cron_is_refused_at_cron(expression: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        cron.check_cron(expression)
    assert locs(exc) == [["cron"]]
    assert exc.value.message.startswith("cron: ")


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@Daily", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("  */15   9-17 * * MON-FRI ", "*/15 9-17 * * MON-FRI"),
    ],
)
def test_standard_expressions_and_shorthands(expression: str, fields: str) -> None:
    assert cron.check_cron(expression) == fields


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "utc", "", "../etc/passwd", "/etc/zone"])
def test_unknown_time_zone_is_refused_at_timezone(name: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        cron.check_timezone(name)
    assert locs(exc) == [["timezone"]]


def test_check_reports_cron_and_timezone_together() -> None:
    with pytest.raises(InvalidInput) as exc:
        cron.check("bad", "Nowhere/Atall")
    assert locs(exc) == [["cron"], ["timezone"]]
    assert "(and 1 more)" in exc.value.message


def test_names_missed_policy_and_fields_set_per_fire() -> None:
    cron.check_name("maintenance.prune")
    for bad in ("", "-x", "a b", "x" * 201):
        with pytest.raises(InvalidInput) as exc:
            cron.check_name(bad)
        assert locs(exc) == [["name"]]
    with pytest.raises(InvalidInput) as exc:
        cron.check_missed("sometimes")
    assert locs(exc) == [["missed"]]
    with pytest.raises(InvalidInput) as exc:
        cron.check_spec_fields(
            {"type": "noop", "run_at": "2030-01-01T00:00:00Z", "idempotency_key": "k"}
        )
    assert locs(exc) == [["job", "run_at"], ["job", "idempotency_key"]]


def test_fire_spec_tags_once_and_keys_by_instant() -> None:
    spec = {"type": "noop", "payload": {"a": 1}, "tags": ["nightly"]}
    fired = cron.fire_spec(spec, "s-1", "report", at(2025, 1, 2, 3, 4))
    assert fired == {
        "type": "noop",
        "payload": {"a": 1},
        "tags": ["nightly", "schedule:report"],
        "idempotency_key": "schedule:s-1:2025-01-02T03:04:00Z",
    }
    again = cron.fire_spec(fired, "s-1", "report", at(2025, 1, 2, 3, 5))
    assert again["tags"] == ["nightly", "schedule:report"]
    assert spec["tags"] == ["nightly"]  # the schedule's own spec is left alone


# -- fire times ----------------------------------------------------------------------------


def test_next_fire_is_strictly_after_and_in_the_schedules_zone() -> None:
    assert cron.next_fire("0 9 * * *", "UTC", at(2025, 1, 1, 9)) == at(2025, 1, 2, 9)
    assert cron.next_fire("0 9 * * *", "UTC", at(2025, 1, 1, 8, 59, 59, 999999)) == at(
        2025, 1, 1, 9
    )
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert cron.next_fire("0 9 * * *", PARIS, at(2025, 1, 1)) == at(2025, 1, 1, 8)
    assert cron.next_fire("0 9 * * *", PARIS, at(2025, 7, 1)) == at(2025, 7, 1, 7)
    assert cron.next_fire("@hourly", "UTC", at(2025, 1, 1, 0, 30)) == at(2025, 1, 1, 1)


def test_fires_between_is_half_open() -> None:
    fires = list(cron.fires_between("*/20 * * * *", "UTC", at(2025, 1, 1), at(2025, 1, 1, 1)))
    assert fires == [at(2025, 1, 1, 0, 20), at(2025, 1, 1, 0, 40), at(2025, 1, 1, 1)]


def test_spring_forward_a_time_that_does_not_exist_fires_once_after_the_gap() -> None:
    # Paris, 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    fires = list(cron.fires_between("30 2 * * *", PARIS, at(2025, 3, 28), at(2025, 4, 1)))
    assert fires == [
        at(2025, 3, 28, 1, 30),  # 02:30 CET
        at(2025, 3, 29, 1, 30),
        at(2025, 3, 30, 1, 0),  # 03:00 CEST, the first instant after the gap
        at(2025, 3, 31, 0, 30),  # 02:30 CEST
    ]
    half_hourly = list(
        cron.fires_between("*/30 * * * *", PARIS, at(2025, 3, 30, 0), at(2025, 3, 30, 2))
    )
    # 01:30 CET, then 02:00 and 02:30 (missing) collapse into 03:00 CEST: no instant twice.
    assert half_hourly == [
        at(2025, 3, 30, 0, 30),
        at(2025, 3, 30, 1),
        at(2025, 3, 30, 1, 30),
        at(2025, 3, 30, 2),
    ]


def test_fall_back_a_fixed_time_that_occurs_twice_fires_once() -> None:
    # Paris, 2025-10-26: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    fires = list(cron.fires_between("30 2 * * *", PARIS, at(2025, 10, 25), at(2025, 10, 28)))
    assert fires == [
        at(2025, 10, 25, 0, 30),
        at(2025, 10, 26, 0, 30),  # the first 02:30 (CEST) only
        at(2025, 10, 27, 1, 30),
    ]


def test_fall_back_a_wildcard_schedule_keeps_its_rhythm_through_the_repeated_hour() -> None:
    fires = list(
        cron.fires_between("*/30 * * * *", PARIS, at(2025, 10, 25, 23, 45), at(2025, 10, 26, 2))
    )
    # Every real half hour: 02:00 and 02:30 local each fire in CEST and again in CET.
    assert fires == [at(2025, 10, 26, 0) + timedelta(minutes=30 * i) for i in range(5)]


@pytest.mark.parametrize(
    ("expression", "after"),
    [
        ("30 2 * * *", at(2025, 10, 20)),
        ("*/30 * * * *", at(2025, 10, 25, 22)),
        ("30 2 * * *", at(2025, 3, 25)),
        ("*/15 * * * *", at(2025, 3, 29, 23)),
        ("0 0 * * *", at(2025, 10, 20)),
    ],
)
def test_catching_up_across_dst_finds_the_same_instants_as_going_forward(
    expression: str, after: datetime
) -> None:
    """``due_fires`` walks back from now; it must agree with the forward walk."""
    forward = list(islice(cron.fires_after(expression, PARIS, after), 12))
    now = forward[-1] + timedelta(seconds=1)
    fired, following = cron.due_fires(expression, PARIS, forward[0], now, "run_all")
    assert fired == forward
    assert following == cron.next_fire(expression, PARIS, forward[-1])


# -- the missed-fire policy -------------------------------------------------------------


EVERY_5 = "*/5 * * * *"
DUE = at(2025, 1, 1, 10, 5)


def test_not_yet_due_fires_nothing_and_keeps_its_time() -> None:
    policies: list[MissedFires] = ["skip", "run_once", "run_all"]
    for missed in policies:
        now = DUE - timedelta(microseconds=1)
        assert cron.due_fires(EVERY_5, "UTC", DUE, now, missed) == ([], DUE)


@pytest.mark.parametrize("missed", ["skip", "run_once", "run_all"])
@pytest.mark.parametrize("late_s", [0, 1.5, 59])
def test_on_time_or_a_round_late_every_policy_fires_the_instant(
    missed: MissedFires, late_s: float
) -> None:
    now = DUE + timedelta(seconds=late_s)
    fired, following = cron.due_fires(EVERY_5, "UTC", DUE, now, missed)
    assert fired == [DUE]
    assert following == at(2025, 1, 1, 10, 10)


# After an outage of five periods, 30 s into the sixth instant's minute.
OUTAGE_NOW = DUE + timedelta(minutes=25, seconds=30)
MISSED = [DUE + timedelta(minutes=5 * i) for i in range(6)]  # 10:05 … 10:30


@pytest.mark.parametrize(
    ("missed", "expected"),
    [("skip", MISSED[-1:]), ("run_once", MISSED[-1:]), ("run_all", MISSED)],
)
def test_after_an_outage(missed: MissedFires, expected: list[datetime]) -> None:
    fired, following = cron.due_fires(EVERY_5, "UTC", DUE, OUTAGE_NOW, missed)
    assert fired == expected
    assert following == at(2025, 1, 1, 10, 35)


def test_skip_drops_instants_older_than_the_grace() -> None:
    now = MISSED[-1] + cron.SKIP_GRACE + timedelta(seconds=1)
    assert cron.due_fires(EVERY_5, "UTC", DUE, now, "skip") == ([], at(2025, 1, 1, 10, 35))
    fired, _ = cron.due_fires(EVERY_5, "UTC", DUE, now, "run_once")
    assert fired == [MISSED[-1]]


def test_run_all_catches_up_at_most_the_latest_instants() -> None:
    now = at(2025, 1, 1) + timedelta(days=30)  # a month of minutes missed
    fired, following = cron.due_fires("* * * * *", "UTC", at(2025, 1, 1), now, "run_all")
    assert len(fired) == MAX_CATCH_UP
    assert fired[-1] == now
    assert fired == sorted(fired)
    assert following == now + timedelta(minutes=1)

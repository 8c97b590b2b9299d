"""Acceptance: the real ``raypipe`` command, run in subprocesses.

One ``raypipe up`` per module starts a Ray head of its own (on a free port, with its own
data folder, SQLite database and namespace); ``raypipe down`` at the end must stop that
head, and nothing else. Commands that do not depend on each other run concurrently to
keep the module short.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import wait_for
from tests.helpers.commands import (
    Done,
    Raypipe,
    gcs_addresses,
    gcs_processes,
    port_open,
    running_head,
    session_dir,
)


@pytest.fixture(scope="module")
def raypipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raypipe]:
    """`raypipe up` once for the module; `raypipe down` must stop the head it started."""
    # JSON logs, for test_the_heads_processes_log_json_with_the_jobs_fields: a head of its
    # own would cost that test ~20 s; the commands' own output is the same.
    yield from running_head(tmp_path_factory.mktemp("cli"), RAYPIPE_LOG_FORMAT="json")


# -- up, migrate ------------------------------------------------------------------------

#: Serve's own lines about its controller, proxy and routes, as Ray streams them from
#: Serve's actors to the driver (``(ProxyActor pid=…) INFO 2026-… proxy 10.0.0.1 -- Got
#: updated endpoints: …``; without the prefix when the job logs JSON) and as the driver's
#: ``ray.serve`` logger prints them (``INFO 2026-… serve 1234 -- Application 'raypipe' is
#: ready at …``). They belong in the session's log files, not on the terminal.
SERVE_CHATTER = re.compile(
    r"ServeController|ProxyActor|ServeReplica|Got updated endpoints|RoutePattern"
    r"|\b(DEBUG|INFO) \d{4}-\d\d-\d\d [\d:,]+ (serve|proxy|controller) "
)
#: What `raypipe up` itself prints on stdout, one line each.
UP_LINES = ("raypipe is up: ", "job types: ", "API on http://", "API key (admin, ")


def serve_chatter(done: Done) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if SERVE_CHATTER.search(line)]


def test_up_prints_raypipes_lines_not_serves(raypipe: Raypipe) -> None:
    done = raypipe.started
    assert done is not None
    assert serve_chatter(done) == [], done.describe()
    lines = done.stdout.splitlines()
    assert [line.startswith(UP_LINES) for line in lines] == [True] * 4, done.describe()
    assert f"API on http://127.0.0.1:{raypipe.env['RAYPIPE_API_PORT']}" in done.stdout


def test_up_twice_joins_the_running_head(raypipe: Raypipe) -> None:
    done = raypipe.ok("up")
    assert f"joined Ray at 127.0.0.1:{raypipe.port}" in done.stdout
    # Serve's "connecting to the existing Serve app" and its redeploy stay in its logs.
    assert serve_chatter(done) == [], done.describe()
    assert all(line.startswith(UP_LINES) for line in done.stdout.splitlines()), done.describe()
    # Every extra is installed here: every built-in runs, none is missing.
    [types] = [line for line in done.stdout.splitlines() if line.startswith("job types: ")]
    assert {"noop", "embed.texts", "mesh.from_image", "document.process"} <= set(
        types.removeprefix("job types: ").split(", ")
    )


def test_migrate_prints_the_revision(raypipe: Raypipe) -> None:
    from raypipe.store.schema_version import head_revision

    done = raypipe.ok("migrate")
    assert done.stdout.strip().endswith(f"is at revision {head_revision()}")
    assert str(raypipe.data_dir / "raypipe.db") in done.stdout
    assert done.stderr_lines == []


# -- submit --wait ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def waited(raypipe: Raypipe) -> dict[str, Done]:
    """Three `submit --wait` runs, side by side."""
    runs = {
        "noop": ("submit", "noop", "--payload", "{}", "--wait"),
        "sleep": (
            "submit",
            "sleep",
            "--payload",
            '{"seconds": 1, "steps": 4}',
            "--wait",
            "--json",
        ),
        "fail": ("submit", "fail", "--payload", '{"error": "PermanentError"}', "--wait"),
    }
    return dict(zip(runs, raypipe.many(list(runs.values())), strict=True))


def test_submit_wait_prints_the_completed_job(waited: dict[str, Done]) -> None:
    done = waited["noop"]
    assert done.returncode == 0, done.describe()
    fields = dict(
        (part.strip() for part in line.split(":", 1))
        for line in done.stdout.splitlines()
        if ":" in line
    )
    assert fields["type"] == "noop"
    assert fields["status"] == "completed"
    uuid.UUID(fields["id"])
    assert done.stderr_lines == []


def test_submit_wait_json_reports_completion_and_progress(waited: dict[str, Done]) -> None:
    done = waited["sleep"]
    assert done.returncode == 0, done.describe()
    job = done.json()
    assert isinstance(job, dict)
    assert job["type"] == "sleep"
    assert job["status"] == "completed"
    assert job["progress"] == 100
    assert job["result"] == {"slept": 1.0}
    assert job["payload"] == {"seconds": 1.0, "steps": 4}
    assert done.stderr_lines == []


def test_submit_wait_of_a_failing_job_exits_non_zero_with_one_line(
    waited: dict[str, Done],
) -> None:
    done = waited["fail"]
    assert done.returncode != 0, done.describe()
    assert len(done.stderr_lines) == 1, done.describe()
    line = done.stderr_lines[0]
    assert line.startswith("raypipe: job ")
    assert "failed: PermanentError: failed on purpose" in line
    assert re.search(r"^\s*status: failed$", done.stdout, re.MULTILINE), done.describe()


# -- jobs, show, cancel, retry -----------------------------------------------------------


def _job_id(done: Done) -> str:
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "id":
            return value.strip()
    raise AssertionError(f"no id in output\n{done.describe()}")


def test_jobs_lists_completed_jobs_as_json(raypipe: Raypipe, waited: dict[str, Done]) -> None:
    completed, failed = raypipe.many(
        [
            ("jobs", "--status", "completed", "--json"),
            ("jobs", "--status", "failed", "--type", "fail", "--json"),
        ]
    )
    assert completed.returncode == 0, completed.describe()
    jobs = completed.json()
    assert isinstance(jobs, list)
    ids = {_job_id(waited["noop"]), waited["sleep"].json()["id"]}  # type: ignore[index]
    assert ids <= {job["id"] for job in jobs}
    assert {job["status"] for job in jobs} == {"completed"}
    assert failed.returncode == 0, failed.describe()
    assert _job_id(waited["fail"]) in {job["id"] for job in failed.json()}  # type: ignore[union-attr]


def test_show_json_includes_attempts(raypipe: Raypipe, waited: dict[str, Done]) -> None:
    job_id = _job_id(waited["fail"])
    job = raypipe.ok("show", job_id, "--json").json()
    assert isinstance(job, dict)
    assert job["id"] == job_id
    assert job["status"] == "failed"
    assert job["error"] == {"type": "PermanentError", "message": "failed on purpose"}
    assert [attempt["attempt"] for attempt in job["attempts"]] == [1]
    assert job["attempts"][0]["status"] == "failed"
    assert job["attempts"][0]["error"]["type"] == "PermanentError"


def test_cancel_a_delayed_job(raypipe: Raypipe) -> None:
    submitted = raypipe.ok("submit", "noop", "--delay", "3600")
    job_id = submitted.stdout.strip()
    uuid.UUID(job_id)
    done = raypipe.ok("cancel", job_id)
    assert done.stdout.strip() == f"{job_id} cancelled"
    again = raypipe("cancel", job_id)  # a second cancel is refused in one line
    assert again.returncode != 0
    assert len(again.stderr_lines) == 1, again.describe()
    assert again.stderr_lines[0].startswith(f"raypipe: job {job_id} is cancelled")


def test_a_paused_queue_keeps_its_jobs_until_resumed(raypipe: Raypipe) -> None:
    assert raypipe.ok("queues", "pause", "default").stdout.startswith("queue default paused since ")
    try:
        job_id = raypipe.ok("submit", "noop").stdout.strip()
        queues = raypipe.ok("queues", "list", "--json").json()
        assert isinstance(queues, list)
        default = next(q for q in queues if q["name"] == "default")
        assert default["paused"] and default["depth"] >= 1 and default["paused_at"]
        unknown = raypipe("queues", "pause", "nope")
        assert unknown.returncode != 0 and len(unknown.stderr_lines) == 1, unknown.describe()
        assert unknown.stderr_lines[0].startswith("raypipe: no queue 'nope'")
    finally:
        assert raypipe.ok("queues", "resume", "default").stdout.strip() == "queue default resumed"

    def completed() -> object:
        job = raypipe.ok("show", job_id, "--json").json()
        return isinstance(job, dict) and job["status"] == "completed" and job

    shown = wait_for(completed, what="the resumed queue's job to complete")
    assert isinstance(shown, dict) and shown["attempt"] == 1


def test_embeddings_artifact_and_delete(raypipe: Raypipe) -> None:
    payload = json.dumps({"texts": ["hello world", "a cat on a mat"]})
    done = raypipe("submit", "embed.texts", "--payload", payload, "--wait", "--json", timeout=300)
    assert done.returncode == 0, done.describe()
    job = done.json()
    assert isinstance(job, dict) and job["status"] == "completed"
    assert [a["name"] for a in job["artifacts"]] == ["embeddings.npy"]
    out = raypipe.cwd / "vectors.npy"
    saved = raypipe.ok("artifact", job["id"], "embeddings.npy", "-o", str(out))
    assert saved.stdout.startswith(str(out))
    assert np.load(out).shape == (2, 384)
    assert raypipe.ok("delete", job["id"]).stdout.strip() == f"{job['id']} deleted"
    gone = raypipe("show", job["id"])
    assert gone.returncode == 1 and "not found" in gone.stderr_lines[0]


def test_retry_a_failed_job_queues_it_again(raypipe: Raypipe, waited: dict[str, Done]) -> None:
    job_id = _job_id(waited["fail"])
    done = raypipe.ok("retry", job_id, "--json")
    job = done.json()
    assert isinstance(job, dict)
    assert job["id"] == job_id
    assert job["status"] == "queued"
    assert job["error"] is None


# -- bad input ---------------------------------------------------------------------------

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"

BAD_INPUT: dict[str, tuple[tuple[str, ...], Sequence[str]]] = {
    "unknown type": (
        ("submit", "nope", "--payload", "{}"),
        ("unknown job type 'nope'", "fail", "noop", "sleep"),
    ),
    "payload failing its model": (
        ("submit", "sleep", "--payload", '{"seconds": "soon"}'),
        ("payload.seconds",),
    ),
    "negative priority": (
        ("submit", "noop", "--priority", "-1"),
        ("priority", "greater than or equal to 0"),
    ),
    "unknown queue": (("submit", "noop", "--queue", "nope"), ("unknown queue 'nope'", "default")),
    "invalid JSON": (("submit", "noop", "--payload", "{not json"), ("--payload", "not valid JSON")),
    "show unknown id": (("show", UNKNOWN_ID), (f"job {UNKNOWN_ID} not found",)),
    "cancel unknown id": (("cancel", UNKNOWN_ID), (f"job {UNKNOWN_ID} not found",)),
}


@pytest.fixture(scope="module")
def bad_input(raypipe: Raypipe) -> tuple[dict[str, Done], int, int]:
    """Every bad command, run side by side; with the job count before and after."""
    before = raypipe.job_count()
    results = raypipe.many([args for args, _ in BAD_INPUT.values()])
    after = raypipe.job_count()
    return dict(zip(BAD_INPUT, results, strict=True)), before, after


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_with_one_clear_line(
    bad_input: tuple[dict[str, Done], int, int], case: str
) -> None:
    done = bad_input[0][case]
    assert done.returncode != 0, done.describe()
    assert "Traceback" not in done.stderr, done.describe()
    assert len(done.stderr_lines) == 1, done.describe()
    line = done.stderr_lines[0]
    assert line.startswith("raypipe: "), done.describe()
    for fragment in BAD_INPUT[case][1]:
        assert fragment in line, done.describe()
    assert done.stdout.strip() == "", done.describe()


def test_bad_input_writes_nothing(
    raypipe: Raypipe, bad_input: tuple[dict[str, Done], int, int]
) -> None:
    _, before, after = bad_input
    assert after == before
    assert raypipe.rows_in_database() == after


def test_invalid_input_exits_2_and_missing_jobs_exit_1(
    bad_input: tuple[dict[str, Done], int, int],
) -> None:
    results = bad_input[0]
    assert results["unknown type"].returncode == 2
    assert results["invalid JSON"].returncode == 2
    assert results["show unknown id"].returncode == 1


USAGE_ERRORS = {
    "unknown status filter": (("jobs", "--status", "lost"), ("--status", "'lost'")),
    "limit out of range": (("jobs", "--limit", "0"), ("--limit", "greater than or equal to 1")),
    "priority not a number": (("submit", "noop", "--priority", "high"), ("--priority",)),
    "missing job type": (("submit",), ("Missing argument",)),
    "unknown command": (("launch",), ("No such command 'launch'",)),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_are_one_line(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Rejected while parsing, before any database or Ray: checked in-process, for speed."""
    from raypipe.cli import main

    args, fragments = USAGE_ERRORS[case]
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("raypipe: ")
    assert lines[0].endswith("--help`)")
    for fragment in fragments:
        assert fragment in lines[0], err


# -- logs ---------------------------------------------------------------------------------


def _json_records(paths: Iterator[Path]) -> Iterator[dict[str, object]]:
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    yield json.loads(line)


def test_the_heads_processes_log_json_with_the_jobs_fields(
    raypipe: Raypipe, waited: dict[str, Done]
) -> None:
    failed = _job_id(waited["fail"])
    logs = session_dir(raypipe.port) / "logs"

    def about_the_job() -> list[dict[str, object]] | None:
        records = [
            r for r in _json_records(logs.glob("worker-*")) if r.get("raypipe_job_id") == failed
        ]
        return records if len(records) >= 2 else None

    records = wait_for(about_the_job, what="the failed job's JSON log lines")
    assert isinstance(records, list)
    by_message = {str(r["message"]): r for r in records}
    # The processor's own line (ctx.logger, in the worker) and the dispatcher's.
    mine = by_message["attempt 1 raises PermanentError on purpose"]
    ended = next(r for m, r in by_message.items() if m.startswith(f"job {failed} attempt 1"))
    for record in (mine, ended):
        assert record["levelname"] == "WARNING", record
        assert (record["attempt"], record["job_type"], record["queue"], record["tenant"]) == (
            1,
            "fail",
            "default",
            "default",
        ), record
        assert record["job_id"] != failed  # Ray's own job id, beside raypipe's
    assert "failed: PermanentError: failed on purpose" in str(ended["message"])
    # The API on Serve writes its access log in the same format.
    health = f"http://127.0.0.1:{raypipe.env['RAYPIPE_API_PORT']}/health"
    assert httpx.get(health, timeout=30).status_code == 200

    def access_logged() -> bool:
        records = _json_records((logs / "serve").glob("*.log"))
        return any("/health" in str(r.get("message", "")) for r in records)

    wait_for(access_logged, what="the API's JSON access log line")


# -- down (last: it ends the module's Ray) -----------------------------------------------


def test_down_stops_only_its_own_head(raypipe: Raypipe) -> None:
    # `ray stop` would kill these bystanders: their command lines look like Ray's.
    bystanders = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", *args],
            stdin=subprocess.DEVNULL,
        )
        for args in (["log_monitor.py"], [f"--address=127.0.0.1:{raypipe.port}"])
    ]
    try:
        assert gcs_processes(raypipe.port)
        # A job running when `down` is called finishes first: the dispatcher drains.
        running = raypipe.ok("submit", "sleep", "--payload", '{"seconds": 2, "steps": 2}')
        job_id = running.stdout.strip()

        def started() -> bool:
            job = raypipe.ok("show", job_id, "--json").json()
            return isinstance(job, dict) and job["status"] != "queued"

        wait_for(started, what="the sleep job to start")
        done = raypipe.ok("down")
        assert "stopped Ray" in done.stdout, done.describe()
        assert serve_chatter(done) == [], done.describe()
        finished = raypipe.ok("show", job_id, "--json").json()
        assert isinstance(finished, dict), finished
        assert (finished["status"], finished["attempt"]) == ("completed", 1)
        assert "raypipe-dispatcher" in done.stdout
        assert not port_open(raypipe.port)
        assert gcs_processes(raypipe.port) == []
        assert [b.poll() for b in bystanders] == [None, None], "down stopped others' processes"

        again, listed, waiting = raypipe.many(
            [("down",), ("jobs", "--json"), ("submit", "noop", "--wait")]
        )
        assert again.returncode == 0, again.describe()
        assert again.stdout.strip() == "raypipe is not running"
        # Without Ray, reads still work and --wait says why it cannot follow the job.
        assert listed.returncode == 0, listed.describe()
        assert len(listed.json()) >= 4  # type: ignore[arg-type]
        assert waiting.returncode == 1, waiting.describe()
        assert len(waiting.stderr_lines) == 1, waiting.describe()
        assert "no dispatcher runs: start one with `raypipe up`" in waiting.stderr
    finally:
        for bystander in bystanders:
            bystander.kill()
            bystander.wait()


def test_after_down_ray_finds_no_stopped_head(raypipe: Raypipe) -> None:
    """`ray start` (inside `raypipe up`) names its head in Ray's current-cluster file, which
    `ray status` and a bare ``ray.init()`` read; `down` must not leave it naming the head
    it stopped, or both wait on that address (`ray status` for ~30 s)."""
    assert raypipe("down").returncode == 0  # already down when the whole module runs
    stopped = re.compile(rf"\d:{raypipe.port}\b")

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        done = subprocess.run(
            args,
            env=raypipe.env,
            cwd=raypipe.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        return done, time.monotonic() - started

    status, elapsed = run(str(Path(sys.executable).with_name("ray")), "status")
    said = status.stdout + status.stderr
    assert elapsed < 5, f"`ray status` took {elapsed:.1f}s:\n{said}"
    assert not stopped.search(said), said
    if not gcs_addresses():  # else `ray status` asks that other Ray on this machine
        assert status.returncode != 0, said
        assert "Could not find any running Ray instance" in said, said
    # It named this head only (the head's Ray folder is its own): nothing to name now.
    assert not raypipe.ray_pointer.exists(), raypipe.ray_pointer.read_text()

    # A bare ray.init() starts a Ray of its own, as after `ray stop`.
    script = (
        "import ray; "
        "context = ray.init(num_cpus=1, include_dashboard=False, "
        "object_store_memory=80 * 1024 * 1024); "
        "print(context.address_info['gcs_address']); ray.shutdown()"
    )
    joined, _ = run(sys.executable, "-c", script)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "Started a local Ray instance" in joined.stderr, joined.stderr
    assert not stopped.search(joined.stdout), joined.stdout

"""Every benchmark in bench/ at its documented size: docs/benchmarks.md and the README's
summary of ratios, from one command.

    python bench/run_all.py [--only NAME ...] [--quick]

Each bench runs in a subprocess of its own (most start a local Ray, mesh one per worker
count) with ``--json``; its tables join docs/benchmarks.json, beside the last figures of
the benches not run this time (``--only``). From that file come docs/benchmarks.md (the
date, commit and machine, and for each bench what it measures, from its docstring, the
exact command and its tables) and the summary between ``<!-- bench:summary -->`` and
``<!-- /bench:summary -->`` in README.md: one line per headline ratio. ``--quick`` runs
the smoke sizes, those of tests/perf/test_bench_smoke.py; its figures say so.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import PG_ADMIN_URL, Table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.json"
DOCS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
SUMMARY = re.compile(r"(<!-- bench:summary -->\n).*?(<!-- /bench:summary -->)", re.S)


@dataclass(frozen=True)
class Bench:
    """One script of bench/: its documented arguments, and the smoke's."""

    name: str
    args: str
    quick: str

    def command(self, quick: bool) -> list[str]:
        """The command line as the README and docs show it (``python bench/…``)."""
        return ["python", f"bench/{self.name}.py", *shlex.split(self.quick if quick else self.args)]


BOTH = "--db sqlite --db postgres"
#: In the README's order. ``quick`` keeps each comparison's shape (the same reference,
#: alternating sides, best of 3) at a size where the whole smoke takes minutes: the large
#: embeddings job still fills two chunks of 256 texts, one per actor; mesh has enough
#: images that the start and the end of a run do not weigh on it; HTTP runs on PostgreSQL
#: only (each database costs both servers' start-up, and SQLite's writes are guarded by
#: batches and db). A quick batch takes a tenth of a second a side, so it keeps the best of 7
#: rather than 3: one pause of the database in three runs is what a smoke in CI once failed on.
BENCHES = {
    bench.name: bench
    for bench in (
        Bench("noop", f"--jobs 5000 {BOTH}", f"--jobs 1000 {BOTH}"),
        Bench("db", "--jobs 10000", "--jobs 2000"),
        Bench(
            "http_api",
            BOTH,
            "--db postgres --warmup 5 --single 20 --concurrent 40 --bulk-requests 6",
        ),
        Bench(
            "embeddings",
            "--texts 2000 --small-jobs 200",
            "--texts 520 --small-jobs 52 --no-cold-start",
        ),
        Bench("mesh", "", "--images 12"),
        Bench("batches", "--jobs 10000", "--jobs 2000 --repeat 7"),
        Bench("load", "--jobs 10000 --clients 20", "--jobs 300 --clients 5"),
        # The smoke leaves Celery out: CI installs no bench extra and runs no Redis.
        Bench(
            "fairness",
            "--a-jobs 2000 --b-jobs 20 --seconds 0.2",
            "--a-jobs 200 --b-jobs 5 --seconds 0.1 --no-celery",
        ),
        Bench(
            "claim_scale",
            f"--rows 1000000 --tenants 1000 {BOTH}",
            f"--rows 20000 --small 2000 --tenants 100 --rounds 5 {BOTH}",
        ),
    )
}


class BenchFailed(RuntimeError):
    """A bench exited with an error; the message holds its output when it was captured."""


def measure(
    bench: Bench, quick: bool, env: Mapping[str, str] | None = None, capture: bool = False
) -> list[Table]:
    """Run ``bench`` in a subprocess; its tables. ``capture``: keep its output (for the
    error) rather than let it reach this terminal."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tables.json"
        done = subprocess.run(
            [sys.executable, *bench.command(quick)[1:], "--json", str(out)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=capture,
            text=True,
        )
        if done.returncode != 0:
            raise BenchFailed(
                f"{shlex.join(bench.command(quick))} exited with {done.returncode}"
                + (f":\n{done.stdout[-6000:]}{done.stderr[-6000:]}" if capture else "")
            )
        return [Table.from_dict(table) for table in json.loads(out.read_text())]


# -- what a run is recorded with -----------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    dirty = git("status", "--porcelain")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if dirty else "")


def machine() -> dict[str, str]:
    """What the figures depend on besides the code."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {name: metadata.version(name) for name in ("ray", "torch")}
    engine = sa.create_engine(PG_ADMIN_URL)
    host = engine.url.host or "localhost"
    where = "this machine" if host in ("127.0.0.1", "localhost", "::1") else host
    try:
        with engine.connect() as conn:
            postgres = conn.execute(sa.text("SHOW server_version")).scalar_one()
    except sa.exc.OperationalError:
        postgres = "unreachable"
    finally:
        engine.dispose()
    return {
        "CPU": f"{os.cpu_count()} cores, {cpu}",
        "memory": f"{memory:.1f} GiB",
        "Python": platform.python_version(),
        "Ray": versions["ray"],
        "torch": versions["torch"],
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": f"{postgres}, on {where}",
        "OS": platform.platform(),
    }


def docstring(bench: Bench) -> str:
    """What the bench measures, in its own words (read without importing it)."""
    source = (ROOT / "bench" / f"{bench.name}.py").read_text()
    return ast.get_docstring(ast.parse(source)) or ""


# -- what is written -------------------------------------------------------------------------


def stamp(entry: Mapping[str, Any], day: bool = False) -> str:
    """When, on which commit and at which sizes an entry was measured."""
    sizes = "smoke sizes (--quick)" if entry["quick"] else "documented sizes"
    date = entry["date"][:10] if day else entry["date"]
    return f"{date}, {entry['commit']}, {sizes}"


def markdown(results: Mapping[str, Any]) -> str:
    """docs/benchmarks.md from the recorded results."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `python bench/run_all.py` from `docs/benchmarks.json`: edit the benches",
        "(`bench/*.py`, whose docstrings these sections quote), not this page. Each bench",
        "compares raypipe with a reference measured in the same run, the two sides taken",
        "in turn `--repeat` times (3) and each side's best kept: this machine's speed drifts",
        "by up to 2× within a minute, which one run of each side would read as a ratio.",
        "",
        "Machine of the last run:",
        "",
        *(f"- {name}: {value}" for name, value in results["machine"].items()),
    ]
    for name, entry in results["benchmarks"].items():
        lines += [
            "",
            f"## bench/{name}.py",
            "",
            docstring(BENCHES[name]),
            "",
            f"Measured {stamp(entry)}:",
            "",
            "```bash",
            entry["command"],
            "```",
            *("\n" + Table.from_dict(table).markdown() for table in entry["tables"]),
        ]
    return "\n".join(lines) + "\n"


def summary(results: Mapping[str, Any]) -> str:
    """The README's table: every headline ratio, in the benches' order."""
    lines = ["| raypipe / its reference, in the same run | ratio |", "|---|---|"]
    for entry in results["benchmarks"].values():
        for table in entry["tables"]:
            lines += [f"| {name} | {ratio:.2f} |" for name, ratio in table["ratios"].items()]
    stamps = {name: stamp(entry, day=True) for name, entry in results["benchmarks"].items()}
    when = (
        next(iter(stamps.values()))
        if len(set(stamps.values())) == 1
        else "; ".join(f"{name} {when}" for name, when in stamps.items())
    )
    lines += [
        "",
        f"Measured {when}. Every table, its command and the machine:"
        " [docs/benchmarks.md](docs/benchmarks.md).",
    ]
    return "\n".join(lines) + "\n"


def write(results: Mapping[str, Any]) -> None:
    """docs/benchmarks.json and .md, and the README's summary (only between its markers:
    the rest of the README is left as it is on disk)."""
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    DOCS.write_text(markdown(results))
    readme = README.read_text()
    if not SUMMARY.search(readme):
        raise SystemExit("README.md has no <!-- bench:summary --> … <!-- /bench:summary -->")
    README.write_text(SUMMARY.sub(lambda m: m[1] + summary(results) + m[2], readme))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(BENCHES), help="repeatable")
    parser.add_argument("--quick", action="store_true", help="the smoke sizes")
    args = parser.parse_args()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmarks": {}}
    fresh, failed = {}, []
    for name in args.only or BENCHES:
        bench = BENCHES[name]
        command = shlex.join(bench.command(args.quick))
        print(f"\n== {command}", flush=True)
        started = time.perf_counter()
        try:
            tables = measure(bench, args.quick)
        except BenchFailed as exc:  # the others' figures are still worth writing
            print(f"== {exc}", flush=True)
            failed.append(name)
            continue
        print(f"== {name}: {time.perf_counter() - started:.0f} s", flush=True)
        fresh[name] = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": revision(),
            "quick": args.quick,
            "command": command,
            "tables": [asdict(table) for table in tables],
        }
    benchmarks = {**previous["benchmarks"], **fresh}
    write(
        {
            "machine": machine(),
            "benchmarks": {name: benchmarks[name] for name in BENCHES if name in benchmarks},
        }
    )
    print(f"\nwrote {DOCS.relative_to(ROOT)}, {RESULTS.relative_to(ROOT)} and README.md's summary")
    if failed:
        raise SystemExit(f"failed, their earlier figures kept: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""``raypipe prune | orphans | stuck``: the built-in maintenance, straight against the database.

The same functions the scheduled ``maintenance.*`` jobs run, for cron, monitoring and
operators; no Ray needed. ``stuck`` exits 1 when anything is stuck.
"""

from __future__ import annotations

from typing import Annotated

import typer

from raypipe.artifacts import ArtifactStore
from raypipe.commands import JsonFlag, database, print_json
from raypipe.config import get_settings
from raypipe.jobs import utcnow
from raypipe.store import maintenance

DryRunFlag = Annotated[bool, typer.Option("--dry-run", help="Count only; change nothing.")]


def prune(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than", min=0, help="Days since a job finished (default: retention_days)."
        ),
    ] = None,
    dry_run: DryRunFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete finished jobs older than the retention, with their attempts, events, webhook
    deliveries and artifacts, and the batches they leave empty."""
    settings = get_settings()
    with database(settings) as engine:
        report = maintenance.prune(
            engine,
            ArtifactStore(settings.artifacts_url),
            settings,
            utcnow(),
            older_than_days=older_than,
            dry_run=dry_run,
        )
    verb = "would prune" if dry_run else "pruned"
    _show(
        report,
        as_json,
        f"{verb} {report.jobs} jobs finished before {report.to_dict()['cutoff']}"
        f" ({report.attempts} attempts, {report.events} events,"
        f" {report.deliveries} webhook deliveries), {report.batches} batches,"
        f" {report.artifact_folders} artifact folders ({_size(report.artifact_bytes)})",
    )


def orphans(dry_run: DryRunFlag = False, as_json: JsonFlag = False) -> None:
    """Remove artifact folders whose job no longer exists, once older than orphan_grace_s."""
    settings = get_settings()
    with database(settings) as engine:
        report = maintenance.orphans(
            engine, ArtifactStore(settings.artifacts_url), settings, utcnow(), dry_run=dry_run
        )
    verb = "would remove" if dry_run else "removed"
    _show(
        report,
        as_json,
        f"{verb} {report.removed} orphaned artifact folders ({_size(report.removed_bytes)})"
        f" of {report.scanned} scanned; {report.spared} more within the grace period",
    )


def _show(
    report: maintenance.PruneReport | maintenance.OrphanReport, as_json: bool, text: str
) -> None:
    """A report as JSON, or as ``text`` for people."""
    if as_json:
        print_json(report.to_dict())
    else:
        typer.echo(text)


def stuck(as_json: JsonFlag = False) -> None:
    """Report jobs whose lease expired, that overran their timeout, or that wait too long
    to be claimed; exits 1 when there are any (for cron and monitoring)."""
    settings = get_settings()
    with database(settings) as engine:
        report = maintenance.stuck(engine, settings, utcnow())
    if as_json:
        print_json(report.to_dict())
    else:
        _print_stuck(report)
    if report.total:
        raise typer.Exit(1)


def _print_stuck(report: maintenance.StuckReport) -> None:
    if not report.total:
        typer.echo("nothing is stuck")
    for name, found in (
        ("lease expired", report.lease_expired),
        ("overrunning", report.overrunning),
        ("waiting", report.waiting),
    ):
        if found.count:
            typer.echo(f"{name}: {found.count}")
        for job in found.examples:
            since = job.to_dict()["since"]
            typer.echo(f"  {job.id}  {job.type:<20} {job.queue:<12} {job.tenant:<16} since {since}")


def _size(count: int) -> str:
    """Bytes for people, in powers of 1000 (as ``du --si``): 512 B, 1.5 kB, 3.2 MB."""
    size, unit = float(count), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"

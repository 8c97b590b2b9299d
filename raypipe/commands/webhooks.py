"""``raypipe webhooks …``: deliveries, replays and signing secrets, straight on the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from raypipe.commands import JsonFlag, database, print_json
from raypipe.config import get_settings
from raypipe.store.webhooks import Delivery, DeliveryStatus, WebhookStore
from raypipe.submission import DEFAULT_TENANT

app = typer.Typer(
    help="Webhooks: what was delivered, replays of failed deliveries, signing secrets.",
    no_args_is_help=True,
)


@contextmanager
def _store() -> Iterator[WebhookStore]:
    with database(get_settings()) as engine:
        yield WebhookStore(engine)


def _line(delivery: Delivery) -> str:
    answer = delivery.last_error or (
        f"HTTP {delivery.last_status_code}" if delivery.last_status_code else ""
    )
    about = delivery.job_id or delivery.batch_id or "-"
    return (
        f"{delivery.id}  {delivery.status.value:<10} {delivery.event:<15} {about:<36}"
        f" tries {delivery.attempts:<2} {delivery.created_at:%Y-%m-%d %H:%M:%S}  {answer}"
    ).rstrip()


@app.command()
def deliveries(
    status: Annotated[DeliveryStatus | None, typer.Option()] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's deliveries.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's deliveries.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List webhook deliveries, newest first."""
    with _store() as store:
        found = store.list(status=status, job_id=job, batch_id=batch, limit=limit)
    if as_json:
        print_json([d.to_dict() for d in found])
        return
    for delivery in found:
        typer.echo(_line(delivery))


@app.command()
def replay(delivery_id: str, as_json: JsonFlag = False) -> None:
    """Send a delivery again (same webhook-id); the running sender picks it up."""
    with _store() as store:
        delivery = store.replay(delivery_id)
    if as_json:
        print_json(delivery.to_dict())
        return
    typer.echo(f"{delivery.id} pending again")


@app.command()
def secret(
    tenant: Annotated[str, typer.Option(help="Whose secret.")] = DEFAULT_TENANT,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it with a new one.")] = False,
) -> None:
    """Print a tenant's signing secret (created on first use), or rotate it."""
    with _store() as store:
        typer.echo(store.rotate_secret(tenant) if rotate else store.secret(tenant))
